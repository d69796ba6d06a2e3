"""Rule admins: what each rule pays in words, what it did in the last 30 days, the simulator's form,
"simulate this event" and "test this rule" (SPEC §17), per role (SPEC §11)."""

import json
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from connect.delivery import reward_action_dispatch
from connect.models import RewardAction
from rules.descriptions import rule_pays_in_words
from rules.models import Rule

pytestmark = pytest.mark.django_db

SIMULATE = reverse("admin:rules_rule_simulate")


@pytest.fixture
def quest_rules(make_rule):
    points = make_rule(
        "quest_points",
        "quest.completed",
        [
            {"target": "actor", "reward_type": "points", "amount": "context.base_reward_points"},
            {"target": "primary_subject", "reward_type": "points", "amount": "100", "lock_condition": "vip_or_pro"},
        ],
    )
    badge = make_rule(
        "quest_master",
        "quest.completed",
        [{"target": "actor", "reward_type": "nft", "amount": "1", "params": {"badge_type": "quest_master_10"},
          "max_per_target": 1}],
        condition="context.total_quests_completed >= 10",
    )  # fmt: skip
    return points, badge


def test_a_rule_says_what_it_pays_in_words(quest_rules):
    points, badge = (Rule.objects.prefetch_related("rewards").get(pk=rule.pk) for rule in quest_rules)
    assert rule_pays_in_words(points) == (
        "actor: context.base_reward_points points; primary_subject: 100 points, when VIP or PRO"
    )
    assert rule_pays_in_words(badge) == "actor: badge quest_master_10, once"


def test_the_rules_list_shows_pays_fired_and_points_of_the_last_30_days(quest_rules, ingest, login):
    points_rule, badge_rule = quest_rules
    for n, pts in enumerate((40, 2)):
        event = ingest("quest.completed", f"user{n}", None, {"base_reward_points": pts, "total_quests_completed": 3})
        reward_action_dispatch(action_id=RewardAction.objects.get(event=event).pk)
    old = ingest("quest.completed", "old", None, {"base_reward_points": 500, "total_quests_completed": 1})
    reward_action_dispatch(action_id=RewardAction.objects.get(event=old).pk)
    RewardAction.objects.filter(event=old).update(created_at=timezone.now() - timedelta(days=31))
    ingest("quest.completed", "user9", None, {"base_reward_points": 7})  # pending: fired, not yet paid

    response = login("rule_editor").get(reverse("admin:rules_rule_changelist"))
    html = response.content.decode().replace("<wbr>", "")  # line-break hints inside codes
    rows = {rule.code: rule for rule in response.context["cl"].result_list}

    assert (rows["quest_points"].activity_30d.fired, rows["quest_points"].activity_30d.points) == (3, 42)
    assert (rows["quest_master"].activity_30d.fired, rows["quest_master"].activity_30d.points) == (0, 0)
    assert "actor: badge quest_master_10, once" in html
    assert "primary_subject: 100 points, when VIP or PRO" in html
    assert '<td class="field-points_30d">42</td>' in html
    assert '<td class="field-budget_left">—</td>' in html
    assert 'class="badge badge-active"' in html


def test_the_simulator_form_lists_event_types_and_suggests_context_keys_from_recent_events(quest_rules, ingest, login):
    ingest("quest.completed", "alice", None, {"base_reward_points": 40, "total_quests_completed": 12})
    client = login("rule_editor")

    page = client.get(SIMULATE)
    builder = page.context["builder"]
    assert "quest.completed" in dict(builder.fields["event_type"].choices)

    suggested = client.post(SIMULATE, {"suggest": "1", "b-event_type": "quest.completed", "b-actor_user_id": "bob"})
    rows = [
        (key.value(), value.field.widget.attrs.get("placeholder"))
        for key, value in suggested.context["builder"].context_rows
    ]
    assert ("base_reward_points", "40") in rows and ("total_quests_completed", "12") in rows
    assert suggested.context["builder"]["actor_user_id"].value() == "bob"


def test_the_simulator_form_builds_the_event_and_simulates_it_writing_nothing(quest_rules, login):
    data = {
        "simulate_form": "1", "b-rows": "3", "b-event_type": "quest.completed", "b-actor_user_id": "alice",
        "b-primary_subject_user_id": "", "b-occurred_at": "",
        "b-key_0": "base_reward_points", "b-value_0": "25", "b-key_1": "total_quests_completed", "b-value_1": "10",
        "b-key_2": "note", "b-value_2": "plain text",
    }  # fmt: skip
    response = login("rule_editor").post(SIMULATE, data)

    result = response.context["result"]
    planned = sorted((a.rule_code, a.target_user_id, a.reward_type, a.amount) for a in result.plan.actions)
    assert planned == [("quest_master", "alice", "nft", 1), ("quest_points", "alice", "points", 25)]
    # the JSON box shows what the form built: numbers as numbers, other text as strings
    built = json.loads(response.context["form"]["event"].value())
    assert built["context"] == {"base_reward_points": 25, "total_quests_completed": 10, "note": "plain text"}
    assert not RewardAction.objects.exists()


def test_an_event_page_offers_simulate_this_event_to_rule_editors_only(quest_rules, ingest, login):
    event = ingest("quest.completed", "alice", None, {"base_reward_points": 9, "total_quests_completed": 10})
    url = reverse("admin:connect_economicevent_change", args=[event.pk])
    assert 'id="simulate-event"' in login("rule_editor").get(url).content.decode()
    assert 'id="simulate-event"' not in login("finance").get(url).content.decode()

    response = login("rule_editor").get(SIMULATE, {"event": str(event.pk)})
    planned = sorted((a.rule_code, a.amount) for a in response.context["result"].plan.actions)
    # as ingestion would see it now: alice already holds the once-only badge this event gave her
    assert planned == [("quest_points", 9)]
    badge_line = next(e for e in response.context["result"].trace if e["rule"].rule_code == "quest_master")["lines"][0]
    assert badge_line["line"].outcome == "skipped"
    assert RewardAction.objects.filter(event=event).count() == 2  # the stored ones only, nothing new
    assert login("finance").get(SIMULATE, {"event": str(event.pk)}).status_code == 403
    assert login("rule_editor").get(SIMULATE, {"event": "not-an-id"}).context["result"] is None


def test_a_rule_page_offers_test_this_rule_on_the_latest_event_of_its_type(quest_rules, ingest, login):
    points_rule, _ = quest_rules
    client = login("rule_editor")
    assert 'id="test-rule"' in client.get(reverse("admin:rules_rule_change", args=[points_rule.pk])).content.decode()

    nothing_yet = client.get(SIMULATE, {"rule": "quest_points"})
    assert nothing_yet.context["result"] is None
    assert nothing_yet.context["builder"]["event_type"].value() == "quest.completed"

    ingest("quest.completed", "carol", None, {"base_reward_points": 6})
    response = client.get(SIMULATE, {"rule": "quest_points"})
    assert response.context["tested_rule"] == "quest_points"
    assert [(a.target_user_id, a.amount) for a in response.context["result"].plan.actions] == [("carol", 6)]
    assert 'tested-rule" data-rule="quest_points"' in response.content.decode()


@pytest.mark.parametrize(
    ("role", "status"), [("superuser", 200), ("rule_editor", 200), ("finance", 403), ("plain_staff", 403)]
)
def test_the_simulator_form_and_test_this_rule_follow_the_roles(quest_rules, login, role, status):
    client = login(role)
    assert client.get(SIMULATE, {"rule": "quest_points"}).status_code == status
    assert client.post(SIMULATE, {"suggest": "1", "b-event_type": "quest.completed"}).status_code == status


def test_the_rules_list_reads_activity_in_one_query_however_many_rules(make_rule, ingest, login):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = login("rule_editor")
    url = reverse("admin:rules_rule_changelist")

    def queries_with(rules: int) -> int:
        for n in range(Rule.objects.count(), rules):
            make_rule(f"rule_{n}", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "1"}])
        ingest("quest.completed", f"user_{rules}", None, {})
        client.get(url)  # warm caches
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url).status_code == 200
        return len(captured)

    assert queries_with(2) == queries_with(12)
