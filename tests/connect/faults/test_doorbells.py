"""The doorbells of one commit go to the broker (Redis) in one round trip; one bad message does not
stop the others. Each test runs on both paths: the filled template (this project's Redis transport)
and Celery's message published through a kombu batch (any other transport)."""

import base64
import json
import uuid

import pytest
import redis
from kombu.transport.redis import PublishBatch

from connect import dispatch
from connect.dispatch import dispatch_enqueue_many
from connect.tasks import dispatch_reward_action


def _queued_action_ids(client) -> list[str]:
    ids = []
    for raw in client.lrange("celery", 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == "connect.tasks.dispatch_reward_action"
        ids.append(message["headers"]["argsrepr"].strip("()[]',\""))
    return sorted(ids)


@pytest.fixture(params=["template", "publisher"])
def path(request, monkeypatch):
    if request.param == "publisher":
        monkeypatch.setattr(dispatch, "_doorbell_template", lambda task, channel: None)
    return request.param


@pytest.fixture
def writes(monkeypatch):
    """Values per LPUSH command sent on its own, and messages per kombu batch flush."""
    counted = {"lpush": [], "flush": []}
    flush, lpush = PublishBatch.flush, redis.Redis.lpush

    def counting_flush(self):
        if self._buffered:
            counted["flush"].append(self._buffered)
        return flush(self)

    def counting_lpush(self, name, *values):
        if not isinstance(self, redis.client.Pipeline):
            counted["lpush"].append(len(values))
        return lpush(self, name, *values)

    monkeypatch.setattr(PublishBatch, "flush", counting_flush)
    monkeypatch.setattr(redis.Redis, "lpush", counting_lpush)
    return counted


def _one_round_trip(path: str, writes: dict, count: int) -> bool:
    if path == "template":
        return writes == {"lpush": [count], "flush": []}  # one LPUSH with every message
    return writes == {"lpush": [], "flush": [count]}  # one pipeline of one LPUSH each


def test_the_doorbells_of_one_commit_go_out_in_one_round_trip(broker, path, writes):
    action_ids = sorted(str(uuid.uuid4()) for _ in range(3))

    assert dispatch_enqueue_many(action_ids) == []

    assert _queued_action_ids(broker.client) == action_ids
    assert _one_round_trip(path, writes, 3)


def test_a_message_that_cannot_be_built_does_not_stop_the_others(broker, path, monkeypatch):
    action_ids = sorted(str(uuid.uuid4()) for _ in range(3))
    unlucky = action_ids[1]
    if path == "template":
        fill = dispatch._DoorbellTemplate.fill

        def failing_for_one(self, action_id):
            if action_id == unlucky:
                raise ValueError("cannot encode")
            return fill(self, action_id)

        monkeypatch.setattr(dispatch._DoorbellTemplate, "fill", failing_for_one)
    else:
        amqp = dispatch_reward_action.app.amqp
        create_task_message = amqp.create_task_message

        def failing_for_one(task_id, name, args, kwargs, **options):
            if args[0] == unlucky:
                raise ValueError("cannot encode")
            return create_task_message(task_id, name, args, kwargs, **options)

        monkeypatch.setattr(amqp, "create_task_message", failing_for_one)

    assert dispatch_enqueue_many(action_ids) == [unlucky]

    assert _queued_action_ids(broker.client) == [action_ids[0], action_ids[2]]


def test_a_single_doorbell_takes_the_same_path(broker, path, writes):
    action_id = str(uuid.uuid4())

    assert dispatch_enqueue_many([action_id]) == []

    assert _queued_action_ids(broker.client) == [action_id]
    assert _one_round_trip(path, writes, 1)


def test_an_id_that_is_not_plain_text_takes_the_publisher_path(broker, writes):
    odd = "action'\"id"

    assert dispatch_enqueue_many([odd, str(uuid.uuid4())]) == []

    assert writes == {"lpush": [], "flush": [2]}
    raw = [json.loads(message) for message in broker.client.lrange("celery", 0, -1)]
    assert odd in [json.loads(base64.b64decode(message["body"]))[0][0] for message in raw]


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


def test_a_doorbell_is_the_message_apply_async_would_send(broker, path):
    """Same task, arguments, queue, routing, serializer and delivery mode as apply_async: a worker
    runs it exactly as it runs a message sent the usual way."""
    action_id = str(uuid.uuid4())

    dispatch_reward_action.apply_async([action_id])
    dispatch_enqueue_many([action_id, action_id])

    usual, batched, again = broker.client.lrange("celery", 0, -1)[::-1]  # LPUSH: the newest first
    assert _envelope_shape(batched) == _envelope_shape(usual) == _envelope_shape(again)
    ids = [json.loads(raw)["headers"]["id"] for raw in (usual, batched, again)]
    tags = [json.loads(raw)["properties"]["delivery_tag"] for raw in (usual, batched, again)]
    assert len(set(ids)) == len(set(tags)) == 3  # every message its own task id and delivery tag
    assert json.loads(batched)["properties"]["correlation_id"] == ids[1]
    envelope = json.loads(batched)
    assert envelope["headers"]["task"] == "connect.tasks.dispatch_reward_action"
    assert json.loads(base64.b64decode(envelope["body"]))[0] == [action_id]
    assert envelope["properties"]["delivery_mode"] == 2  # persistent
    assert envelope["headers"]["timelimit"] == [
        dispatch_reward_action.time_limit,
        dispatch_reward_action.soft_time_limit,
    ]
    assert envelope["headers"]["id"] != json.loads(usual)["headers"]["id"]


def test_the_queue_is_declared_once_per_broker_connection(broker, path, monkeypatch):
    """kombu's cache of declared queues is checked first: the first doorbell on a connection declares
    the queue, later ones do not call maybe_declare at all."""
    from kombu import Producer

    declared = []
    maybe_declare = Producer.maybe_declare

    def counting(self, entity, *args, **kwargs):
        declared.append(entity.name)
        return maybe_declare(self, entity, *args, **kwargs)

    monkeypatch.setattr(Producer, "maybe_declare", counting)
    with dispatch_reward_action.app.producer_or_acquire() as producer:
        producer.channel.connection.client.declared_entities.clear()  # as on a new connection

    for _ in range(3):
        assert dispatch_enqueue_many([str(uuid.uuid4())]) == []

    assert declared == ["celery"]
    assert len(_queued_action_ids(broker.client)) == 3


def test_the_template_applies_only_on_this_projects_redis_channel(broker):
    """kombu's own Redis transport (or any other) gets no template: its doorbells take the publisher path."""
    from kombu import Connection

    from config.broker import Transport

    with Connection(broker.url) as kombu_own, Connection(broker.url, transport=Transport) as ours:
        assert dispatch._doorbell_template(dispatch_reward_action, kombu_own.default_channel) is None
        template = dispatch._doorbell_template(dispatch_reward_action, ours.default_channel)
        assert template is not None and template.key == "celery"
        assert dispatch._doorbell_template(dispatch_reward_action, ours.default_channel) is template  # built once


def _producer_acquisitions(monkeypatch) -> list[int]:
    app = dispatch_reward_action.app
    acquired = []
    producer_or_acquire = app.producer_or_acquire

    def counting(*args, **kwargs):
        acquired.append(1)
        return producer_or_acquire(*args, **kwargs)

    monkeypatch.setattr(app, "producer_or_acquire", counting)
    return acquired


def test_after_the_first_template_doorbells_the_next_skip_kombus_producer_pool(broker, writes, monkeypatch):
    acquired = _producer_acquisitions(monkeypatch)
    batches = [sorted(str(uuid.uuid4()) for _ in range(2)) for _ in range(3)]

    for action_ids in batches:
        assert dispatch_enqueue_many(action_ids) == []

    assert len(acquired) == 1  # the first commit only
    assert writes == {"lpush": [2, 2, 2], "flush": []}
    assert _queued_action_ids(broker.client) == sorted(sum(batches, []))


def test_a_failed_push_through_the_lane_goes_through_the_pool_and_the_lane_is_rebuilt(broker, monkeypatch, caplog):
    assert dispatch_enqueue_many([str(uuid.uuid4())]) == []
    first_lane = dispatch._doorbell_lane
    acquired = _producer_acquisitions(monkeypatch)
    lpush, failures = redis.Redis.lpush, []

    def failing_once(self, name, *values):
        if not failures:
            failures.append(name)
            raise redis.ConnectionError("connection reset")
        return lpush(self, name, *values)

    monkeypatch.setattr(redis.Redis, "lpush", failing_once)
    action_ids = sorted(str(uuid.uuid4()) for _ in range(2))

    assert dispatch_enqueue_many(action_ids) == []

    assert failures == ["celery"] and len(acquired) == 1
    assert dispatch._doorbell_lane is not None and dispatch._doorbell_lane is not first_lane
    assert set(action_ids) <= set(_queued_action_ids(broker.client))
    # The recovered failure is still told: a warning with the error that caused it.
    [record] = [r for r in caplog.records if r.name == "connect.dispatch" and r.levelname == "WARNING"]
    assert "retrying through the pool" in record.getMessage()
    assert record.exc_info[0] is redis.ConnectionError and record.actions == 2


def test_the_lane_is_not_used_in_another_process_or_after_the_producer_pool_changed(broker, monkeypatch):
    assert dispatch_enqueue_many([str(uuid.uuid4())]) == []
    acquired = _producer_acquisitions(monkeypatch)

    with monkeypatch.context() as forked:
        forked.setattr(dispatch.os, "getpid", lambda: -1)  # as in a forked child
        assert dispatch_enqueue_many([str(uuid.uuid4())]) == []
    assert len(acquired) == 1
    # Built in "the child": not used back in this process.
    assert dispatch_enqueue_many([str(uuid.uuid4())]) == []
    assert len(acquired) == 2
    # Celery's producer pool is no longer the one the lane was built on (a new broker URL).
    object.__setattr__(dispatch._doorbell_lane, "producer_pool", object())
    assert dispatch_enqueue_many([str(uuid.uuid4())]) == []
    assert len(acquired) == 3
    assert dispatch_enqueue_many([str(uuid.uuid4())]) == []  # the lane rebuilt is used again
    assert len(acquired) == 3

    assert len(_queued_action_ids(broker.client)) == 5
