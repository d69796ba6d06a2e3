"""Rule editor admin: simulator, import preview and confirm, enable/disable, history diffs, help text."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from connect.models import EconomicEvent, RewardAction, RewardGrant, UserProfile
from points.models import Transaction
from rules.models import Rule, RuleVersion
from rules.services import rules_export

from .conftest import rule_data

pytestmark = pytest.mark.django_db

SIMULATE_URL = "/admin/rules/rule/simulate/"


def world_state():
    return (
        EconomicEvent.objects.count(),
        list(RewardAction.objects.order_by("pk").values_list("pk", "status")),
        list(UserProfile.objects.order_by("pk").values_list("user_id", "sponsor_id", "is_vip", "is_pro")),
        list(RewardGrant.objects.order_by("pk").values_list("pk", "count")),
        Transaction.objects.count(),
        list(Rule.objects.order_by("pk").values_list("pk", "version", "is_active")),
    )


def simulate(client, **event):
    return client.post(SIMULATE_URL, {"event": json.dumps(event)})


@pytest.fixture
def rules(make_rule):
    make_rule(
        "quest_rule", "quest.completed",
        [
            {"target": "actor", "reward_type": "points", "amount": "context.points"},
            {"target": "primary_subject", "reward_type": "points", "amount": "floor(context.points / 2)",
             "lock_condition": "vip"},
            {"target": "context.partner", "reward_type": "points", "amount": "3"},
            {"target": "actor", "reward_type": "nft", "amount": "1", "params": {"badge_type": "first"},
             "max_per_target": 1},
        ],
    )  # fmt: skip
    make_rule("big_quests", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "1"}],
              condition="context.points >= 100", priority=50)  # fmt: skip
    make_rule("retired", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "1"}],
              is_active=False)  # fmt: skip


def test_the_simulator_shows_every_rule_every_line_and_the_actions(rules, login, ingest):
    line_4 = Rule.objects.get(code="quest_rule").rewards.get(position=4)
    RewardGrant.objects.create(reward_line=line_4, target_user_id="alice", count=1)
    client = login("rule_editor")

    response = simulate(
        client, event_type="quest.completed", actor_user_id="alice", primary_subject_user_id="bob",
        context={"points": 9},
    )  # fmt: skip

    assert response.status_code == 200
    result = response.context["result"]
    assert result.failure is None
    traces = {trace.rule_code: trace for trace in result.plan.trace}
    assert set(traces) == {"quest_rule", "big_quests", "retired"}
    assert (traces["big_quests"].matched, traces["big_quests"].reason) == (False, "condition is false")
    assert (traces["retired"].matched, traces["retired"].reason) == (False, "inactive")
    lines = [
        (line.position, line.outcome, line.reason, line.target, line.amount, line.locked)
        for line in traces["quest_rule"].lines
    ]
    assert lines == [
        (1, "fired", "ok", "alice", 9, False),
        (2, "fired", "locked until vip", "bob", 4, True),
        (3, "skipped", "no target", None, None, False),
        (4, "skipped", "max_per_target reached (1 of 1)", "alice", 1, False),
    ]
    assert [(a.target_user_id, a.amount, a.locked) for a in result.plan.actions] == [
        ("alice", 9, False),
        ("bob", 4, True),
    ]
    html = response.content.decode()
    assert html.count('class="planned-action"') == 2
    assert "locked until vip" in html and "max_per_target reached (1 of 1)" in html
    assert html.count("line-trace outcome-fired") == 2 and html.count("line-trace outcome-skipped") == 2


def test_the_simulator_writes_nothing_even_for_an_event_that_changes_profiles(make_rule, ingest, login):
    make_rule(
        "join_rule", "referral.subjoined",
        [{"target": "primary_subject", "reward_type": "points", "amount": "50", "lock_condition": "vip_or_pro"}],
    )  # fmt: skip
    make_rule("vip_bonus", "user.upgraded_to_vip", [{"target": "actor", "reward_type": "points", "amount": "7"}])
    ingest("referral.subjoined", "newbie", "sponsor")  # a locked reward for "sponsor"
    ingest("referral.joined", "sponsor", "top")  # sponsor(sponsor) = top
    before = world_state()
    client = login("rule_editor")

    response = simulate(client, event_type="user.upgraded_to_vip", actor_user_id="sponsor", context={})
    html = response.content.decode()
    assert "This event would make sponsor VIP." in html
    assert "It would release 1 locked action(s) of sponsor to pending." in html
    (profile,) = [p for user, p in response.context["result"].profiles if user == "sponsor"]
    assert (profile.is_vip, profile.sponsor) == (True, "top")  # seen as after the upgrade
    assert [(a.target_user_id, a.amount) for a in response.context["result"].plan.actions] == [("sponsor", 7)]

    response = simulate(
        client,
        event_type="referral.joined",
        actor_user_id="fresh",
        primary_subject_user_id="sponsor",
        context={"level": 1},
    )
    assert "This event would record sponsor as the sponsor of fresh." in response.content.decode()

    assert world_state() == before


def test_the_simulator_reports_a_rule_that_cannot_be_evaluated(make_rule, login):
    make_rule("divider", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "10 / context.n"}])

    response = simulate(login("rule_editor"), event_type="quest.completed", actor_user_id="a", context={"n": 0})

    assert "Rule &#x27;divider&#x27; could not be evaluated" in response.content.decode()
    assert response.context["result"].plan is None


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ("{not json", "Not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"event_type": "Quest", "actor_user_id": "a"}', "event_type: required"),
        ('{"event_type": "quest.completed"}', "actor_user_id: required"),
        ('{"event_type": "quest.completed", "actor_user_id": "a", "context": []}', "context: must be a JSON object"),
        ('{"event_type": "quest.completed", "actor_user_id": "a", "occurred_at": "yesterday"}', "occurred_at"),
        ('{"event_type": "quest.completed", "actor_user_id": "a", "surprise": 1}', "unknown field(s): surprise"),
    ],
)
def test_the_simulator_explains_a_bad_event_at_the_field(event, message, login):
    response = login("rule_editor").post(SIMULATE_URL, {"event": event})

    assert response.status_code == 200
    assert response.context["result"] is None
    assert any(message in error for error in response.context["form"].errors["event"])


def test_a_stored_event_payload_can_be_pasted_into_the_simulator(rules, login):
    payload = {
        "external_id": "x-1", "source_service": "quest_service", "event_type": "quest.completed",
        "actor_user_id": "alice", "primary_subject_user_id": None, "context": {"points": 120},
        "occurred_at": "2025-01-01T00:00:00Z",
    }  # fmt: skip
    response = login("superuser").post(SIMULATE_URL, {"event": json.dumps(payload)})

    trace = {t.rule_code: t for t in response.context["result"].plan.trace}
    assert trace["big_quests"].matched


# --- import: preview, then confirm ---------------------------------------------------------------


def upload(payload) -> SimpleUploadedFile:
    return SimpleUploadedFile("rules.json", json.dumps(payload).encode(), "application/json")


def test_import_previews_the_changes_then_writes_them_on_confirm(rules, login, staff):
    payload = rules_export(codes=["quest_rule"])
    payload["rules"][0]["rewards"][0]["amount"] = "context.points * 2"
    payload["rules"].append(
        rule_data("new_rule", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "1"}])
    )
    client = login("rule_editor")
    before = world_state()

    preview = client.post(reverse("admin:rules_rule_import"), {"file": upload(payload), "dry_run": "on"})

    assert preview.status_code == 200
    assert world_state() == before
    items = {item["code"]: item for item in preview.context["preview"]}
    assert (items["quest_rule"]["status"], items["quest_rule"]["version"]) == ("replaced", 2)
    assert ("del", '-      "amount": "context.points",') in items["quest_rule"]["diff"]
    assert ("add", '+      "amount": "context.points * 2",') in items["quest_rule"]["diff"]
    assert items["new_rule"]["status"] == "created"
    html = preview.content.decode()
    assert 'id="import-confirm"' in html and 'class="diff-add"' in html

    token = preview.context["confirm_form"].initial["confirm"]
    confirmed = client.post(reverse("admin:rules_rule_import"), {"confirm": token})

    assert confirmed.status_code == 302
    rule = Rule.objects.get(code="quest_rule")
    assert rule.version == 2 and rule.rewards.get(position=1).amount == "context.points * 2"
    assert rule.versions.get(version=2).created_by == staff("rule_editor")
    assert Rule.objects.filter(code="new_rule").exists()


def test_a_tampered_or_refused_import_writes_nothing(rules, login):
    client = login("rule_editor")
    payload = rules_export(codes=["quest_rule"])
    preview = client.post(reverse("admin:rules_rule_import"), {"file": upload(payload), "dry_run": "on"})
    token = preview.context["confirm_form"].initial["confirm"]
    before = world_state()

    tampered = client.post(reverse("admin:rules_rule_import"), {"confirm": token[:-2] + "xx"})
    assert tampered.status_code == 200
    assert "expired or was altered" in tampered.content.decode()

    payload["rules"][0]["condition"] = "context.points >"
    refused = client.post(reverse("admin:rules_rule_import"), {"file": upload(payload), "dry_run": "on"})
    assert refused.context["confirm_form"] is None
    assert "refused    quest_rule" in refused.content.decode()
    assert world_state() == before


def test_the_import_form_previews_by_default(login):
    form = login("rule_editor").get(reverse("admin:rules_rule_import")).context["form"]
    assert form["dry_run"].value() is True


# --- enable / disable, history -------------------------------------------------------------------


def test_enable_and_disable_actions_make_new_versions(rules, login, staff):
    client = login("rule_editor")
    quest = Rule.objects.get(code="quest_rule")
    retired = Rule.objects.get(code="retired")
    url = reverse("admin:rules_rule_changelist")

    client.post(url, {"action": "disable_selected", "_selected_action": [quest.pk]})
    client.post(url, {"action": "enable_selected", "_selected_action": [retired.pk, quest.pk]})
    client.post(url, {"action": "enable_selected", "_selected_action": [retired.pk]})  # already enabled: no-op

    quest.refresh_from_db()
    retired.refresh_from_db()
    assert (quest.is_active, quest.version) == (True, 3)
    assert (retired.is_active, retired.version) == (True, 2)
    assert [v.snapshot["is_active"] for v in quest.versions.order_by("version")] == [True, False, True]
    assert retired.history.first().history_user == staff("rule_editor")


def test_the_history_page_shows_who_changed_what_with_a_diff(make_rule, login):
    client = login("rule_editor")
    rule = make_rule("quest_rule", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "5"}])
    client.post(reverse("admin:rules_rule_changelist"), {"action": "disable_selected", "_selected_action": [rule.pk]})

    response = client.get(reverse("admin:rules_rule_history", args=[rule.pk]))

    html = response.content.decode()
    assert 'id="version-diffs"' in html
    newest = response.context["version_diffs"][0]
    assert newest["version"].version == 2 and newest["version"].created_by.username == "rule_editor"
    assert ("del", '-  "is_active": true,') in newest["diff"] and ("add", '+  "is_active": false,') in newest["diff"]
    assert "by rule_editor" in html

    version_page = client.get(reverse("admin:rules_ruleversion_change", args=[rule.versions.get(version=2).pk]))
    assert 'class="diff-add"' in version_page.content.decode()
    assert "is_active&quot;: false" in version_page.content.decode()


def test_the_rule_form_explains_the_expression_language_and_shows_errors_at_the_field(login):
    client = login("rule_editor")
    page = client.get(reverse("admin:rules_rule_add")).content.decode()
    assert 'id="expression-help"' in page
    for name in ("actor_profile", "upline(actor, 2)", "floor(context.amount * 5 / 100)", "context.level == 1"):
        assert name in page

    response = client.post(
        reverse("admin:rules_rule_add"),
        {
            "code": "bad", "name": "Bad", "event_type": "quest.completed", "condition": "context.level ==",
            "priority": "100", "is_active": "on",
            "rewards-TOTAL_FORMS": "1", "rewards-INITIAL_FORMS": "0", "rewards-MIN_NUM_FORMS": "1",
            "rewards-MAX_NUM_FORMS": "1000", "rewards-0-position": "1", "rewards-0-target": "actor",
            "rewards-0-reward_type": "points", "rewards-0-amount": "10", "rewards-0-params": "{}",
        },
    )  # fmt: skip
    assert response.status_code == 200
    assert list(response.context["adminform"].form.errors) == ["condition"]
    assert not Rule.objects.filter(code="bad").exists()
    assert RuleVersion.objects.count() == 0
