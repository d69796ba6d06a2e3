"""POST/GET of events and reward actions: validation, idempotency, scopes, failures (SPEC §5)."""

import threading
import uuid

import pytest
from django.db import connection
from rest_framework.test import APIClient

from connect.models import EconomicEvent, RewardAction

VALID = {
    "external_id": "evt-1",
    "event_type": "quest.completed",
    "source_service": "quest_service",
    "actor_user_id": "player",
    "primary_subject_user_id": "author",
    "context": {"base_reward_points": 10},
}


@pytest.fixture
def quest(api_for):
    return api_for("quest_service", ["events:write", "events:read"])


def post(api, body, path="/api/v1/events"):
    return api.post(path, body, format="json")


@pytest.mark.usefixtures("demo_rules")
class TestIngest:
    def test_created_event_has_the_contract_fields(self, quest):
        response = post(quest, {**VALID, "occurred_at": "2026-05-01T10:00:00Z"})
        assert response.status_code == 201
        body = response.json()
        assert set(body) == {
            "id", "external_id", "event_type", "source_service", "actor_user_id", "primary_subject_user_id",
            "context", "occurred_at", "reverses_external_id", "reversal_fraction", "status", "error", "received_at",
            "reward_actions",
        }  # fmt: skip
        assert body["occurred_at"] == "2026-05-01T10:00:00Z"
        action = body["reward_actions"][0]
        assert set(action) == {
            "id", "event_id", "rule", "rule_version", "target_user_id", "reward_type", "amount", "params", "status",
            "locked_until_condition", "attempts", "last_error", "result", "created_at", "completed_at",
            "reverses", "reversed_amount", "shortfall",
        }  # fmt: skip
        assert action["event_id"] == body["id"]

    def test_trailing_slash_works_without_redirect(self, quest):
        assert post(quest, VALID, "/api/v1/events/").status_code == 201

    def test_replay_returns_the_stored_event_and_creates_nothing(self, quest):
        first = post(quest, VALID)
        again = post(quest, VALID)
        assert again.status_code == 200
        assert again.json()["id"] == first.json()["id"]
        assert [a["id"] for a in again.json()["reward_actions"]] == [a["id"] for a in first.json()["reward_actions"]]
        assert EconomicEvent.objects.count() == 1 and RewardAction.objects.count() == 2

    def test_replay_shows_current_action_statuses(self, quest):
        first = post(quest, VALID).json()
        RewardAction.objects.filter(pk=first["reward_actions"][0]["id"]).update(status="completed")
        statuses = {a["id"]: a["status"] for a in post(quest, VALID).json()["reward_actions"]}
        assert statuses[first["reward_actions"][0]["id"]] == "completed"

    def test_same_external_id_different_payload_is_a_conflict(self, quest):
        post(quest, VALID)
        response = post(quest, {**VALID, "context": {"base_reward_points": 11}})
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "idempotency_conflict"
        assert EconomicEvent.objects.count() == 1 and RewardAction.objects.count() == 2

    def test_same_external_id_from_another_service_is_another_event(self, quest, api_for):
        other = api_for("rf_service", ["events:write"])
        post(quest, VALID)
        assert post(other, {**VALID, "source_service": "rf_service"}).status_code == 201
        assert EconomicEvent.objects.count() == 2

    def test_source_service_must_be_the_caller(self, quest):
        response = post(quest, {**VALID, "source_service": "voucher_service"})
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "permission_denied"
        assert not EconomicEvent.objects.exists()

    def test_prefix_limited_scope(self, api_for):
        referral = api_for("referral_service", ["events:write:referral."])
        ok = {**VALID, "source_service": "referral_service", "event_type": "referral.joined"}
        assert post(referral, ok).status_code == 201
        denied = post(referral, {**ok, "external_id": "x2", "event_type": "quest.completed"})
        assert denied.status_code == 403
        assert EconomicEvent.objects.count() == 1

    def test_scopes_and_keys(self, api_for):
        reader = api_for("quest_service", ["events:read"])
        assert post(reader, VALID).status_code == 403
        assert post(APIClient(), VALID).status_code == 401
        bad = APIClient()
        bad.credentials(HTTP_AUTHORIZATION="Api-Key nope.nope")
        assert post(bad, VALID).status_code == 401
        assert not EconomicEvent.objects.exists()

    def test_get_event_and_actions(self, quest, api_for):
        created = post(quest, VALID).json()
        got = quest.get(f"/api/v1/events/{created['id']}")
        assert got.status_code == 200 and got.json() == created
        assert quest.get(f"/api/v1/events/{created['id']}/").status_code == 200
        assert quest.get(f"/api/v1/events/{uuid.uuid4()}").json()["error"]["code"] == "not_found"
        writer_only = api_for("rf_service", ["events:write"])
        assert writer_only.get(f"/api/v1/events/{created['id']}").status_code == 403

    def test_reward_action_list_filters_and_pages(self, quest):
        for n in range(3):
            post(quest, {**VALID, "external_id": f"e{n}"})
        listing = quest.get("/api/v1/reward-actions", {"target_user_id": "player"}).json()
        assert set(listing) == {"results", "next", "previous"}
        assert len(listing["results"]) == 3 and {a["target_user_id"] for a in listing["results"]} == {"player"}
        page = quest.get("/api/v1/reward-actions", {"page_size": 4}).json()
        assert len(page["results"]) == 4 and page["next"]
        rest = quest.get(page["next"]).json()
        assert len(rest["results"]) == 2 and rest["next"] is None
        seen = {a["id"] for a in page["results"]} | {a["id"] for a in rest["results"]}
        assert len(seen) == 6
        event_id = page["results"][0]["event_id"]
        by_event = quest.get(
            "/api/v1/reward-actions/", {"event_id": event_id, "status": "pending", "reward_type": "points"}
        )
        assert {a["event_id"] for a in by_event.json()["results"]} == {event_id}
        assert quest.get("/api/v1/reward-actions", {"status": "bogus"}).status_code == 400
        one = quest.get(f"/api/v1/reward-actions/{event_id and page['results'][0]['id']}")
        assert one.status_code == 200 and one.json() == page["results"][0]
        assert quest.get(f"/api/v1/reward-actions/{uuid.uuid4()}").status_code == 404


@pytest.mark.parametrize(
    "change, field",
    [
        ({"external_id": ""}, "external_id"),
        ({"external_id": "x" * 201}, "external_id"),
        ({"external_id": 5}, "external_id"),
        ({"event_type": "Quest.Completed"}, "event_type"),
        ({"event_type": "quest"}, "event_type"),
        ({"event_type": "quest..completed"}, "event_type"),
        ({"event_type": "a." + "b" * 100}, "event_type"),
        ({"actor_user_id": ""}, "actor_user_id"),
        ({"actor_user_id": "u" * 101}, "actor_user_id"),
        ({"primary_subject_user_id": 7}, "primary_subject_user_id"),
        ({"context": [1, 2]}, "context"),
        ({"context": "text"}, "context"),
        ({"context": {"blob": "x" * (64 * 1024)}}, "context"),
        ({"occurred_at": "yesterday"}, "occurred_at"),
    ],
)
def test_invalid_events_are_refused_with_field_details(quest, change, field):
    response = post(quest, {**VALID, **change})
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "validation_error" and field in error["details"]
    assert not EconomicEvent.objects.exists()


@pytest.mark.parametrize("missing", ["external_id", "event_type", "source_service", "actor_user_id"])
def test_missing_required_fields(quest, missing):
    body = {k: v for k, v in VALID.items() if k != missing}
    response = post(quest, body)
    assert response.status_code == 400 and missing in response.json()["error"]["details"]


def test_malformed_json_and_array_bodies(quest):
    broken = quest.post("/api/v1/events", "{not json", content_type="application/json")
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "validation_error"
    array = quest.post("/api/v1/events", [VALID], format="json")
    assert array.status_code == 400 and array.json()["error"]["code"] == "validation_error"


def test_optional_fields_default(quest):
    response = post(quest, {k: VALID[k] for k in ("external_id", "event_type", "source_service", "actor_user_id")})
    assert response.status_code == 201
    body = response.json()
    assert body["context"] == {} and body["primary_subject_user_id"] is None and body["occurred_at"] is None


def test_runtime_error_fails_the_event_without_any_action(quest, make_rule):
    make_rule(
        "good_first", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "5"}], priority=1
    )
    make_rule(
        "divides",
        "quest.completed",
        [{"target": "actor", "reward_type": "points", "amount": "10 / context.n"}],
        priority=2,
    )
    response = post(quest, {**VALID, "context": {"n": 0}})
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "failed" and "divides" in body["error"]
    assert body["reward_actions"] == [] and not RewardAction.objects.exists()
    assert post(quest, {**VALID, "external_id": "ok", "context": {"n": 2}}).json()["status"] == "processed"


def test_priority_and_stop_processing(quest, make_rule):
    make_rule("late", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "1"}], priority=50)
    make_rule("early_stop", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "2"}],
              priority=10, stop_processing=True, condition="context.vip == true")  # fmt: skip
    stopped = post(quest, {**VALID, "context": {"vip": True}}).json()
    assert [(a["rule"], a["amount"]) for a in stopped["reward_actions"]] == [("early_stop", 2)]
    both = post(quest, {**VALID, "external_id": "e2", "context": {"vip": False}}).json()
    assert [(a["rule"], a["amount"]) for a in both["reward_actions"]] == [("late", 1)]


def test_validity_window_uses_occurred_at_else_received_at(quest, make_rule):
    make_rule("spring", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "3"}],
              valid_from="2026-03-01T00:00:00Z", valid_until="2026-06-01T00:00:00Z")  # fmt: skip
    inside = post(quest, {**VALID, "occurred_at": "2026-04-01T00:00:00Z"}).json()
    outside = post(quest, {**VALID, "external_id": "e2", "occurred_at": "2026-07-01T00:00:00Z"}).json()
    received_now = post(quest, {**VALID, "external_id": "e3"}).json()  # today is after the window
    assert [a["amount"] for a in inside["reward_actions"]] == [3]
    assert outside["reward_actions"] == [] and received_now["reward_actions"] == []


def test_inactive_rules_do_not_run(quest, make_rule):
    make_rule("off", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "3"}], is_active=False)
    assert post(quest, VALID).json()["status"] == "ignored"


@pytest.mark.django_db(transaction=True)
def test_twenty_identical_requests_at_once_store_one_event(make_client, make_rule):
    make_rule("r", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "7"}])
    _, key = make_client("quest_service", ["events:write"])
    results, barrier = [], threading.Barrier(20)

    def send():
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
        barrier.wait()
        try:
            response = post(client, VALID)
            results.append((response.status_code, response.json()["id"]))
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(code for code, _ in results) == [200] * 19 + [201]
    assert len({event_id for _, event_id in results}) == 1
    assert EconomicEvent.objects.count() == 1 and RewardAction.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_events_grant_a_once_only_badge_once(make_client, make_rule):
    make_rule("badge", "quest.completed",
              [{"target": "actor", "reward_type": "nft", "amount": "1", "params": {"badge_type": "b"}, "max_per_target": 1}])  # fmt: skip
    _, key = make_client("quest_service", ["events:write"])
    statuses, barrier = [], threading.Barrier(10)

    def send(n):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
        barrier.wait()
        try:
            statuses.append(post(client, {**VALID, "external_id": f"c{n}"}).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [201] * 10
    assert RewardAction.objects.filter(reward_type="nft", target_user_id="player").count() == 1


def test_ingest_query_count_does_not_grow_with_rules_of_other_types(quest, make_rule, django_assert_max_num_queries):
    make_rule("mine", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "1"}])
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as few:
        post(quest, {**VALID, "external_id": "a"})
    for n in range(40):
        make_rule(f"other_{n}", f"other.type_{n % 7}", [{"target": "actor", "reward_type": "points", "amount": "1"}])
    with CaptureQueriesContext(connection) as many:
        post(quest, {**VALID, "external_id": "b"})
    assert len(many) == len(few)
    assert len(many) <= 30


@pytest.mark.usefixtures("demo_rules")
def test_broker_outage_after_commit_still_answers_201_and_keeps_actions_pending(
    quest, monkeypatch, django_capture_on_commit_callbacks
):
    from connect import tasks

    def broker_down(*args, **kwargs):
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(tasks.drain_reward_actions, "apply_async", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        response = post(quest, VALID)
    assert response.status_code == 201
    assert {a["status"] for a in response.json()["reward_actions"]} == {"pending"}
    assert RewardAction.objects.filter(status="pending").count() == 2
