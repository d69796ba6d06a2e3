"""The doorbells of one commit go to the broker (Redis) in one batch; one bad message does not stop
the others."""

import base64
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
    amqp = dispatch_reward_action.app.amqp
    create_task_message = amqp.create_task_message

    def failing_for_one(task_id, name, args, kwargs, **options):
        if args[0] == unlucky:
            raise ValueError("cannot encode")
        return create_task_message(task_id, name, args, kwargs, **options)

    monkeypatch.setattr(amqp, "create_task_message", failing_for_one)

    assert dispatch_enqueue_many(action_ids) == [unlucky]

    assert _queued_action_ids(broker.client) == [action_ids[0], action_ids[2]]


def test_a_single_doorbell_also_takes_the_batch_path(broker, flushes):
    action_id = str(uuid.uuid4())

    assert dispatch_enqueue_many([action_id]) == []

    assert _queued_action_ids(broker.client) == [action_id]
    assert [n for n in flushes if n] == [1]


# Fields that differ between any two messages (ids), and the reply queue apply_async names for
# results, which this task never sends (ignore_result, no result backend).
_PER_MESSAGE = {"id", "root_id", "delivery_tag", "correlation_id", "reply_to"}


def _envelope_shape(raw: bytes) -> dict:
    envelope = json.loads(raw)
    properties = {k: v for k, v in envelope["properties"].items() if k not in _PER_MESSAGE}
    properties["delivery_info"] = {k: v for k, v in properties["delivery_info"].items() if k != "delivery_tag"}
    headers = {k: v for k, v in envelope["headers"].items() if k not in _PER_MESSAGE}
    body = json.loads(base64.b64decode(envelope["body"]))
    return {
        "headers": headers,
        "properties": properties,
        "content-type": envelope["content-type"],
        "content-encoding": envelope["content-encoding"],
        "body": body,
    }


def test_a_doorbell_is_the_message_apply_async_would_send(broker):
    """Same task, arguments, queue, routing, serializer and delivery mode as apply_async: a worker
    runs it exactly as it runs a message sent the usual way."""
    action_id = str(uuid.uuid4())

    dispatch_reward_action.apply_async([action_id])
    dispatch_enqueue_many([action_id])

    usual, batched = broker.client.lrange("celery", 0, -1)[::-1]  # LPUSH: the newest first
    assert _envelope_shape(batched) == _envelope_shape(usual)
    envelope = json.loads(batched)
    assert envelope["headers"]["task"] == "connect.tasks.dispatch_reward_action"
    assert json.loads(base64.b64decode(envelope["body"]))[0] == [action_id]
    assert envelope["properties"]["delivery_mode"] == 2  # persistent
    assert envelope["headers"]["timelimit"] == [
        dispatch_reward_action.time_limit,
        dispatch_reward_action.soft_time_limit,
    ]
    assert envelope["headers"]["id"] != json.loads(usual)["headers"]["id"]
