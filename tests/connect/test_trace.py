"""Every reason code of the decision trace (SPEC §15), each from a real ingest, and its API."""

from datetime import UTC, datetime

import pytest

from connect.models import EconomicEvent, RewardAction
from connect.services import event_ingest

pytestmark = pytest.mark.django_db

AT = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _ingest(external_id, event_type="shop.bought", actor="alice", source="shop", **context):
    data = {
        "external_id": external_id,
        "event_type": event_type,
        "actor_user_id": actor,
        "primary_subject_user_id": None,
        "context": context,
        "occurred_at": AT,
    }
    return event_ingest(client_name=source, data=data).event


def _rules(event) -> dict[str, dict]:
    return {rule["rule"]: rule for rule in EconomicEvent.objects.get(pk=event.pk).trace["rules"]}


def _lines(event, code) -> list[str]:
    return [line["result"] for line in _rules(event)[code]["lines"]]


def test_rule_codes_matched_condition_false_outside_window_and_stopped_by(make_rule):
    points = [{"target": "actor", "reward_type": "points", "amount": "1"}]
    make_rule("a_stopper", "shop.bought", points, priority=10, condition="context.stop == true", stop_processing=True)
    make_rule("b_plain", "shop.bought", points, priority=20)
    make_rule("c_expired", "shop.bought", points, priority=5, valid_until="2026-01-01T00:00:00Z")

    stopped, flowing = _ingest("e1", stop=True), _ingest("e2", stop=False)

    assert {code: rule["result"] for code, rule in _rules(stopped).items()} == {
        "c_expired": "outside_window",
        "a_stopper": "matched",
        "b_plain": "stopped_by:a_stopper",
    }
    assert _rules(flowing)["a_stopper"]["result"] == "condition_false"
    assert _rules(flowing)["b_plain"]["result"] == "matched"
    assert _lines(flowing, "b_plain") == ["fired"]
    fired = _rules(flowing)["b_plain"]["lines"][0]
    assert (fired["target"], fired["amount"], fired["reward_type"]) == ("alice", 1, "points")


def test_rule_code_error_keeps_the_trace_of_a_failed_event(make_rule):
    make_rule("first", "shop.bought", [{"target": "actor", "reward_type": "points", "amount": "2"}], priority=1)
    make_rule("broken", "shop.bought", [{"target": "actor", "reward_type": "points", "amount": "10 // context.n"}])

    event = _ingest("e1", n=0)

    assert event.status == "failed"
    rules = _rules(event)
    assert rules["first"]["result"] == "matched" and rules["broken"]["result"] == "error"
    assert "zero" in rules["broken"]["detail"] or "divid" in rules["broken"]["detail"]


def test_line_codes_no_target_amount_not_positive_cap_locked_and_budget(make_rule):
    make_rule(
        "lines",
        "shop.bought",
        [
            {"target": "context.nobody", "reward_type": "points", "amount": "1"},
            {"target": "actor", "reward_type": "points", "amount": "0 - 3"},
            {"target": "actor", "reward_type": "nft", "params": {"badge_type": "b"}, "max_per_target": 1},
            {"target": "actor", "reward_type": "points", "amount": "1", "max_per_target_per_period": 1,
             "period": "day"},
            {"target": "actor", "reward_type": "points", "amount": "4", "lock_condition": "vip"},
            {"target": "actor", "reward_type": "points", "amount": "4"},
        ],
        budget=6,
    )  # fmt: skip

    first, second = _ingest("e1"), _ingest("e2")

    assert _lines(first, "lines") == [
        "no_target", "amount_not_positive", "fired", "fired", "locked:vip", "budget_partial:1",
    ]  # fmt: skip
    assert _lines(second, "lines") == [
        "no_target", "amount_not_positive", "cap_reached", "period_cap_reached", "budget_exhausted",
        "budget_exhausted",
    ]  # fmt: skip


def test_an_upgrade_that_releases_a_locked_reward_records_the_change_and_the_release(make_rule, client, admin_user):
    make_rule("vip_bonus", "task.done", [{"target": "actor", "reward_type": "points", "amount": "10",
                                          "lock_condition": "vip"}])  # fmt: skip
    _ingest("t1", event_type="task.done", source="tasks")
    [locked] = RewardAction.objects.filter(status="locked")

    upgrade = _ingest("u1", event_type="user.upgraded_to_vip", source="users")

    trace = EconomicEvent.objects.get(pk=upgrade.pk).trace
    assert upgrade.status == "ignored"  # no rule of its own
    assert trace["profile_changes"] == [{"user_id": "alice", "field": "is_vip", "from": False, "to": True}]
    assert trace["released_actions"] == [str(locked.pk)]
    client.force_login(admin_user)
    page = client.get(f"/admin/connect/economicevent/{upgrade.pk}/change/").content.decode()
    assert "released 1 locked action" in page and "is_vip" in page


def test_a_sponsor_recorded_is_a_profile_change(demo_rules):
    event = _ingest("j1", event_type="referral.joined", actor="newbie", source="referral_service", level=1)

    trace = EconomicEvent.objects.get(pk=event.pk).trace
    assert trace["profile_changes"] == []  # no primary_subject: no sponsor

    data = {"external_id": "j2", "event_type": "referral.joined", "actor_user_id": "newbie2",
            "primary_subject_user_id": "boss", "context": {"level": 1}, "occurred_at": AT}  # fmt: skip
    stored = event_ingest(client_name="referral_service", data=data).event
    trace = EconomicEvent.objects.get(pk=stored.pk).trace
    assert trace["profile_changes"] == [{"user_id": "newbie2", "field": "sponsor", "from": None, "to": "boss"}]
    assert _lines(stored, "referral_first_level_registration") == ["fired"]


def test_the_trace_endpoint_needs_events_read_and_answers_404_for_an_unknown_event(make_rule, api_for):
    make_rule("plain", "shop.bought", [{"target": "actor", "reward_type": "points", "amount": "3"}])
    event = _ingest("e1")
    reader, writer = api_for("reader", ["events:read"]), api_for("writer", ["events:write"])

    body = reader.get(f"/api/v1/events/{event.pk}/trace/").json()

    assert body["event_id"] == str(event.pk) and body["status"] == "processed"
    assert body["rules"][0]["rule"] == "plain" and body["rules"][0]["lines"][0]["result"] == "fired"
    assert body["profile_changes"] == [] and body["released_actions"] == []
    assert writer.get(f"/api/v1/events/{event.pk}/trace").status_code == 403
    missing = reader.get("/api/v1/events/00000000-0000-4000-8000-000000000000/trace")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
