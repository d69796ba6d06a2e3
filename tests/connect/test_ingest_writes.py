"""The event POST writes little and reads nothing back: the event is claimed by one INSERT with the
status it most often ends with, the actions by one INSERT, and the 201 body is built from what was
written. These tests pin that the body equals what a later read returns, for every outcome."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from connect.models import EconomicEvent, RewardAction

from .test_events_api import VALID, post


@pytest.fixture
def quest(api_for):
    return api_for("quest_service", ["events:write", "events:read"])


def _created_then_read(api, body) -> tuple[dict, dict]:
    created = post(api, body)
    assert created.status_code == 201, created.content
    read = api.get(f"/api/v1/events/{created.json()['id']}")
    assert read.status_code == 200
    return created.json(), read.json()


@pytest.mark.usefixtures("demo_rules")
def test_the_201_body_is_what_a_later_read_returns(quest):
    body = {**VALID, "context": {"base_reward_points": 40, "total_quests_completed": 10}}

    created, read = _created_then_read(quest, body)

    assert created == read
    assert created["status"] == "processed"
    assert len(created["reward_actions"]) == 3  # two points lines and the tenth-quest badge
    stored = list(RewardAction.objects.filter(event_id=created["id"]).order_by("created_at", "id"))
    assert [a["id"] for a in created["reward_actions"]] == [str(a.pk) for a in stored]


def test_an_event_no_rule_rewards_is_stored_ignored(quest):
    created, read = _created_then_read(quest, {**VALID, "event_type": "nobody.cares"})

    assert created == read
    assert (created["status"], created["reward_actions"]) == ("ignored", [])
    assert EconomicEvent.objects.get(pk=created["id"]).status == "ignored"


def test_a_rule_that_fails_leaves_the_event_failed_with_its_error(quest, make_rule):
    make_rule("divides", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "1 / 0"}])

    created, read = _created_then_read(quest, VALID)

    assert created == read
    assert created["status"] == "failed" and "divides" in created["error"]
    stored = EconomicEvent.objects.get(pk=created["id"])
    assert (stored.status, stored.error) == ("failed", created["error"])


@pytest.mark.usefixtures("demo_rules")
def test_an_event_with_actions_is_written_in_two_inserts_and_one_update_of_its_outcome(quest):
    with CaptureQueriesContext(connection) as captured:
        assert post(quest, {**VALID, "external_id": "counted"}).status_code == 201

    statements = [q["sql"].split() for q in captured.captured_queries]
    table_word = {"INSERT": 2, "UPDATE": 1, "DELETE": 2}  # INSERT INTO t / UPDATE t / DELETE FROM t
    writes = [f"{words[0]} {words[table_word[words[0]]]}" for words in statements if words[0] in table_word]
    # In a caller's transaction the event is claimed first; its status and decision trace (SPEC
    # §15) are known only once its rules ran.
    assert writes == [
        'INSERT "connect_economicevent"',
        'INSERT "connect_rewardaction"',
        'UPDATE "connect_economicevent"',
    ]


@pytest.mark.usefixtures("demo_rules")
def test_a_replay_reads_the_actions_as_they_are_now(quest):
    created = post(quest, VALID).json()
    RewardAction.objects.filter(event_id=created["id"]).update(status="completed", attempts=1)

    replay = post(quest, VALID)

    assert replay.status_code == 200
    assert {a["status"] for a in replay.json()["reward_actions"]} == {"completed"}
    assert replay.json() == quest.get(f"/api/v1/events/{created['id']}").json()
