"""Budgets in the rule editor: set them in the form, see them fall, simulate against them."""

import json

import pytest

from rules.models import Rule

pytestmark = pytest.mark.django_db


@pytest.fixture
def budgeted(make_rule):
    return make_rule("campaign", "shop.bought", [{"target": "actor", "reward_type": "points", "amount": "40"}],
                     budget=100, budget_period="month", budget_policy="partial")  # fmt: skip


def test_the_rule_list_and_page_show_the_budget_used_and_left_this_period(budgeted, login, ingest):
    client = login("rule_editor")
    ingest("shop.bought", "alice")
    ingest("shop.bought", "bob")

    listing = client.get("/admin/rules/rule/").content.decode()
    page = client.get(f"/admin/rules/rule/{budgeted.pk}/change/").content.decode()

    assert "80 used, 20 left of 100 (month:" in listing
    assert "80 used, 20 left of 100 (month:" in page and 'name="budget"' in page


def test_the_simulator_pays_what_the_budget_has_left(budgeted, login, ingest):
    client = login("rule_editor")
    ingest("shop.bought", "alice")
    ingest("shop.bought", "bob")

    page = client.post(
        "/admin/rules/rule/simulate/",
        {"event": json.dumps({"event_type": "shop.bought", "actor_user_id": "carol", "context": {}})},
    ).content.decode()

    assert "ok, budget paid 20 of what was asked" in page
    assert Rule.objects.get(code="campaign").budget_counters.get().used == 80  # nothing written


def test_a_budget_and_a_period_cap_are_saved_from_the_editor(login):
    client = login("rule_editor")
    form = {
        "code": "capped", "name": "Capped", "description": "", "event_type": "shop.bought", "condition": "",
        "priority": 100, "is_active": "on", "budget": "500", "budget_period": "week", "budget_policy": "skip",
        "rewards-TOTAL_FORMS": "1", "rewards-INITIAL_FORMS": "0", "rewards-MIN_NUM_FORMS": "1",
        "rewards-MAX_NUM_FORMS": "1000",
        "rewards-0-position": "1", "rewards-0-target": "actor", "rewards-0-reward_type": "points",
        "rewards-0-amount": "5", "rewards-0-params": "{}", "rewards-0-lock_condition": "",
        "rewards-0-max_per_target_per_period": "2", "rewards-0-period": "day",
    }  # fmt: skip

    response = client.post("/admin/rules/rule/add/", form)

    assert response.status_code == 302, response.content.decode()[-3000:]
    rule = Rule.objects.get(code="capped")
    line = rule.rewards.get()
    assert (rule.budget, rule.budget_period, rule.budget_policy) == (500, "week", "skip")
    assert (line.max_per_target_per_period, line.period) == (2, "day")
    assert rule.versions.get().snapshot["rewards"][0]["period"] == "day"
