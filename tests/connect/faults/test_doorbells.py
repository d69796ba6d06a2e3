"""Doorbells through a real Redis broker: at most one message per event, coalesced under load."""

import json
import time

import pytest

from connect.doorbell import doorbell_ring
from connect.services import event_ingest
from connect.tasks import drain_reward_actions

from .helpers import rule_create


def _messages(broker) -> list[dict]:
    return [json.loads(raw) for raw in broker.client.lrange("celery", 0, -1)]


def test_a_burst_of_rings_sends_one_doorbell_now_and_one_for_the_end_of_the_window(broker, settings):
    settings.DISPATCH_DOORBELL_SECONDS = 5

    assert doorbell_ring(first_ids=["a"]) is True
    assert doorbell_ring(first_ids=["b"]) is True  # scheduled for the end of the window
    assert [doorbell_ring(first_ids=[f"c{i}"]) for i in range(20)] == [False] * 20  # covered by it

    messages = _messages(broker)
    assert len(messages) == 2
    etas = sorted((m["headers"]["eta"] is not None, m["headers"]["argsrepr"]) for m in messages)
    assert etas == [(False, "[['a']]"), (True, "[[]]")]


def test_after_the_window_a_ring_goes_out_at_once_again(broker, settings):
    settings.DISPATCH_DOORBELL_SECONDS = 0.2
    doorbell_ring(first_ids=["a"])
    time.sleep(0.25)
    doorbell_ring(first_ids=["b"])
    assert [m["headers"]["eta"] for m in _messages(broker)] == [None, None]


def test_a_doorbell_the_broker_refused_does_not_silence_the_next_commits(broker, settings, monkeypatch):
    settings.DISPATCH_DOORBELL_SECONDS = 5
    send = drain_reward_actions.apply_async

    def refuse(*args, **kwargs):
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(drain_reward_actions, "apply_async", refuse)
    assert doorbell_ring(first_ids=["a"]) is False
    monkeypatch.setattr(drain_reward_actions, "apply_async", send)
    assert doorbell_ring(first_ids=["b"]) is True
    assert [m["headers"]["argsrepr"] for m in _messages(broker)] == ["[['b']]"]


@pytest.mark.django_db(transaction=True)
def test_ingest_rings_at_most_one_doorbell_per_event_and_fewer_under_load(broker, settings):
    settings.DISPATCH_DOORBELL_SECONDS = 5
    rule_create(amount="3")
    for index in range(30):  # each event makes a points action
        event_ingest(
            client_name="quest_service",
            data={"external_id": f"load-{index}", "event_type": "quest.completed", "actor_user_id": f"u{index}"},
        )
    assert broker.queued() == 2
