"""The hand-written response serializers give exactly what generic ModelSerializers give for the same fields."""

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone
from rest_framework import serializers

from connect import selectors
from connect.models import EconomicEvent, RewardAction
from connect.serializers import EventOut, RewardActionOut
from connect.services import event_ingest

Status = RewardAction.Status


# The reference: the response serializers as generic ModelSerializers, the fields declared as before.
class ReferenceRewardActionOut(serializers.ModelSerializer):
    event_id = serializers.UUIDField()
    rule = serializers.CharField(source="rule_code")
    amount = serializers.IntegerField()
    params = serializers.DictField()
    result = serializers.DictField()

    class Meta:
        model = RewardAction
        fields = (
            "id", "event_id", "rule", "rule_version", "target_user_id", "reward_type", "amount", "params",
            "status", "locked_until_condition", "attempts", "last_error", "result", "created_at", "completed_at",
            "reverses", "reversed_amount", "shortfall",
        )  # fmt: skip


class ReferenceEventOut(serializers.ModelSerializer):
    context = serializers.DictField()
    reward_actions = ReferenceRewardActionOut(many=True, read_only=True)

    class Meta:
        model = EconomicEvent
        fields = (
            "id", "external_id", "event_type", "source_service", "actor_user_id", "primary_subject_user_id",
            "context", "occurred_at", "reverses_external_id", "reversal_fraction", "status", "error", "received_at",
            "reward_actions",
        )  # fmt: skip


def _types(value):
    if isinstance(value, dict):
        return {key: _types(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_types(item) for item in value]
    return type(value)


def assert_same(data, reference) -> None:
    assert data == reference
    # json.dumps keeps key order: equal text means the same keys in the same order.
    assert json.dumps(data) == json.dumps(reference)
    # Equal is not enough: a str enum equals its value, yet is another type to whoever reads .data.
    assert _types(data) == _types(reference)


def ingest(external_id: str, event_type: str, source: str = "quest_service", **fields):
    data = {
        "external_id": external_id,
        "event_type": event_type,
        "source_service": source,
        "actor_user_id": "player",
        "primary_subject_user_id": "author",
        "context": {},
        "occurred_at": None,
        **fields,
    }
    return event_ingest(client_name=source, data=data)


@pytest.fixture
def events(demo_rules):
    """Stored events whose actions are in every state a response shows."""
    quest = ingest(
        "quest-1",
        "quest.completed",
        context={"base_reward_points": 10, "total_quests_completed": 12, "note": "ünïcode", "nested": {"x": None}},
        occurred_at=datetime(2026, 5, 1, 10, 0, 0, 123456, tzinfo=UTC),
    ).event
    completed, failed, pending = selectors.event_with_actions(event_id=quest.pk).reward_actions.all()
    RewardAction.objects.filter(pk=completed.pk).update(
        status=Status.COMPLETED,
        attempts=1,
        result={"transaction_id": str(uuid.uuid4()), "balance": 110, "extra": {"list": [1, 2.5, None]}},
        completed_at=timezone.now() + timedelta(seconds=1, microseconds=7),
    )
    RewardAction.objects.filter(pk=failed.pk).update(
        status=Status.FAILED, attempts=5, last_error="NFT service answered 503", params={"badge": "quest_master"}
    )
    assert pending.status == Status.PENDING

    locked = ingest(
        "ref-1", "referral.subjoined", source="referral_service", actor_user_id="newbie", context={"level": 2}
    ).event
    (locked_action,) = locked.reward_actions.all()
    assert locked_action.status == Status.LOCKED and locked_action.locked_until_condition == "vip_or_pro"

    bare = ingest("misc-1", "misc.nothing_matches", primary_subject_user_id=None, occurred_at=None).event
    EconomicEvent.objects.filter(pk=bare.pk).update(status=EconomicEvent.Status.FAILED, error="Something broke.")
    return [selectors.event_with_actions(event_id=event.pk) for event in (quest, locked, bare)]


def test_fixture_covers_the_states(events):
    quest, locked, bare = events
    assert sorted(a.status for a in quest.reward_actions.all()) == [Status.COMPLETED, Status.FAILED, Status.PENDING]
    assert [a.status for a in locked.reward_actions.all()] == [Status.LOCKED]
    assert list(bare.reward_actions.all()) == []
    assert bare.primary_subject_user_id is None and bare.occurred_at is None


def test_event_output_equals_the_model_serializers(events):
    for event in events:
        assert_same(EventOut(event).data, ReferenceEventOut(event).data)


def test_actions_keep_the_prefetched_order(events):
    quest = events[0]
    ids = [str(action.pk) for action in quest.reward_actions.all()]
    assert [action["id"] for action in EventOut(quest).data["reward_actions"]] == ids


def test_reward_action_output_equals_the_model_serializers(events):
    actions = RewardAction.objects.order_by("created_at", "id")
    assert actions.count() == 4
    assert_same(RewardActionOut(actions, many=True).data, ReferenceRewardActionOut(actions, many=True).data)
    for action in actions:
        assert_same(RewardActionOut(action).data, ReferenceRewardActionOut(action).data)


def test_unsaved_rows_as_ingest_holds_them(demo_rules):
    """The rows ingest just built: choice enums, not yet read back as plain strings."""
    result = ingest("quest-2", "quest.completed", context={"base_reward_points": 4})
    assert result.actions and all(type(action.status) is Status for action in result.actions)
    assert_same(
        RewardActionOut(result.actions, many=True).data, ReferenceRewardActionOut(result.actions, many=True).data
    )


def test_datetimes_follow_the_current_time_zone(events):
    with timezone.override("Asia/Kolkata"):
        data = EventOut(events[0]).data
        assert_same(data, ReferenceEventOut(events[0]).data)
    assert data["occurred_at"] == "2026-05-01T15:30:00.123456+05:30"
    assert EventOut(events[0]).data["occurred_at"] == "2026-05-01T10:00:00.123456Z"


def test_no_fields_are_built_and_no_queries_made(events, monkeypatch, django_assert_num_queries):
    def refuse(self):
        raise AssertionError("fields built")

    monkeypatch.setattr(EventOut, "get_fields", refuse)
    monkeypatch.setattr(RewardActionOut, "get_fields", refuse)
    with django_assert_num_queries(0):
        event = EventOut(events[0]).data
        actions = RewardActionOut(list(events[0].reward_actions.all()), many=True).data
    assert event["reward_actions"] == actions and len(actions) == 3


@pytest.mark.usefixtures("demo_rules")
def test_api_responses_equal_the_model_serializers(api_for):
    quest = api_for("quest_service", ["events:write", "events:read"])
    body = {
        "external_id": "api-1",
        "event_type": "quest.completed",
        "source_service": "quest_service",
        "actor_user_id": "player",
        "primary_subject_user_id": "author",
        "context": {"base_reward_points": 10, "total_quests_completed": 10},
        "occurred_at": "2026-05-01T10:00:00.5+02:00",
    }
    created = quest.post("/api/v1/events", body, format="json")
    assert created.status_code == 201
    stored = selectors.event_with_actions(event_id=created.json()["id"])
    reference = ReferenceEventOut(stored).data
    assert len(reference["reward_actions"]) == 3
    assert_same(created.json(), reference)

    RewardAction.objects.filter(event=stored, reward_type="nft").update(
        status=Status.COMPLETED, result={"badge_id": "b-1"}, completed_at=timezone.now()
    )
    got = quest.get(f"/api/v1/events/{stored.pk}")
    assert got.status_code == 200
    assert_same(got.json(), ReferenceEventOut(selectors.event_with_actions(event_id=stored.pk)).data)
