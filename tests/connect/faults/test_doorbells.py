"""The doorbells of one commit go to the broker (Redis) in one batch; one bad message does not stop
the others."""

import json
import uuid

import pytest
from kombu.transport.redis import PublishBatch

from connect.dispatch import dispatch_enqueue_many
from connect.tasks import dispatch_reward_action


def _queued_action_ids(client) -> list[str]:
    ids = []
    for raw in client.lrange("celery", 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == "connect.tasks.dispatch_reward_action"
        ids.append(message["headers"]["argsrepr"].strip("()[]',\""))
    return sorted(ids)


@pytest.fixture
def flushes(monkeypatch):
    counted = []
    flush = PublishBatch.flush

    def counting_flush(self):
        counted.append(self._buffered)
        return flush(self)

    monkeypatch.setattr(PublishBatch, "flush", counting_flush)
    return counted


def test_the_doorbells_of_one_commit_go_out_in_one_batch(broker, flushes):
    action_ids = sorted(str(uuid.uuid4()) for _ in range(3))

    assert dispatch_enqueue_many(action_ids) == []

    assert _queued_action_ids(broker.client) == action_ids
    assert [n for n in flushes if n] == [3]  # one pipeline of three LPUSHes


def test_a_message_that_cannot_be_sent_does_not_stop_the_others(broker, monkeypatch):
    action_ids = sorted(str(uuid.uuid4()) for _ in range(3))
    unlucky = action_ids[1]
    apply_async = dispatch_reward_action.apply_async

    def failing_for_one(args, **options):
        if args[0] == unlucky:
            raise ConnectionError("cannot encode")
        return apply_async(args, **options)

    monkeypatch.setattr(dispatch_reward_action, "apply_async", failing_for_one)

    assert dispatch_enqueue_many(action_ids) == [unlucky]

    assert _queued_action_ids(broker.client) == [action_ids[0], action_ids[2]]
