"""kombu's Redis transport with one synchronous client per channel (config/broker.py).

The real-worker tests (tests/connect/faults) run every task through this transport, publishing,
consuming, acking, rejecting and retrying; these pin the client reuse and the selection.
"""

import json
import os

import pytest
from kombu import Connection, Exchange, Queue

from config.broker import Transport, transport_for

from .test_deploy import _manage

BROKER_URL = os.environ.get("TEST_BROKER_TRANSPORT_REDIS_URL") or "redis://127.0.0.1:6379/6"


@pytest.fixture
def connection():
    with Connection(BROKER_URL, transport=Transport) as conn:
        conn.default_channel.client.flushdb()
        yield conn
        conn.default_channel.client.flushdb()


def test_a_channel_reuses_one_synchronous_client_until_its_pool_is_replaced(connection):
    channel = connection.default_channel
    client = channel._create_client()

    assert channel._create_client() is client
    with channel.conn_or_acquire() as acquired:
        assert acquired is client
    assert channel._create_client(asynchronous=True) is not client  # the event loop's client is kombu's

    channel._disconnect_pools()  # what closing the channel does
    assert channel._create_client() is not client
    assert channel._create_client().connection_pool is channel.pool


def test_messages_published_in_a_batch_and_one_by_one_are_consumed_and_acked(connection):
    queue = Queue("broker-test", Exchange("broker-test", type="direct"), routing_key="broker-test")
    with connection.Producer() as producer:
        producer.maybe_declare(queue)
        with producer.batch():
            for n in range(3):
                producer.publish({"n": n}, exchange=queue.exchange, routing_key="broker-test")
        producer.publish({"n": 3}, exchange=queue.exchange, routing_key="broker-test")

    received = []
    with connection.SimpleQueue(queue) as simple:
        for _ in range(4):
            message = simple.get(timeout=5)
            received.append(message.payload["n"])
            message.ack()
    assert sorted(received) == [0, 1, 2, 3]
    channel = connection.default_channel
    assert channel.client.llen("broker-test") == 0
    assert channel.client.hlen(channel.unacked_key) == 0  # every ack removed its unacked entry


def test_only_redis_broker_urls_select_this_transport():
    assert transport_for("redis://127.0.0.1:6379/0") == "config.broker:Transport"
    assert transport_for("rediss://cache.example:6380/0") == "config.broker:Transport"
    assert transport_for("amqp://guest@127.0.0.1//") is None
    assert transport_for("sentinel://127.0.0.1:26379") is None
    assert transport_for("") is None

    shown = (
        "import django, json; django.setup(); from config.celery import app; "
        "print(json.dumps(type(app.connection_for_write().transport).__module__))"
    )
    result = _manage(python=shown, CELERY_BROKER_URL=BROKER_URL, SECRET_KEY="x" * 50, DEBUG="1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == "config.broker"
