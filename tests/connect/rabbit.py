"""A real RabbitMQ for the consumer tests (TEST_EVENTS_BROKER_URL, default the local broker): one queue
per test, deleted afterwards, and the consumer run on a thread of the test process."""

import json
import os
import threading
import time
import uuid

from django.db import connections
from kombu import Connection, Exchange, Producer, Queue

from connect.bus import EventConsumer, dead_letter_queue_name

BROKER_URL = os.environ.get("TEST_EVENTS_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")


class Bus:
    """One test's queue and its dead-letter queue on the real broker."""

    def __init__(self, connection: Connection, name: str):
        self.connection = connection
        self.name = name
        self.dead_name = dead_letter_queue_name(name)
        self.channel = connection.channel()
        exchange = Exchange("", type="direct")
        self.queue = Queue(name, exchange, routing_key=name, durable=True, channel=self.channel)
        self.dead_queue = Queue(
            self.dead_name, exchange, routing_key=self.dead_name, durable=True, channel=self.channel
        )
        self.queue.declare()
        self.dead_queue.declare()
        self.producer = Producer(self.channel, exchange=exchange, auto_declare=False)

    def publish(self, body) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.producer.publish(
            raw, routing_key=self.name, content_type="application/json", content_encoding="utf-8", delivery_mode=2
        )

    def ready(self, dead: bool = False) -> int:
        """Messages waiting in the queue (unacknowledged deliveries are not counted)."""
        return (self.dead_queue if dead else self.queue).queue_declare(passive=True).message_count

    def dead_letters(self) -> list:
        messages = []
        while (message := self.dead_queue.get(no_ack=True)) is not None:
            messages.append(message)
        return messages

    def delete(self) -> None:
        for queue in (self.queue, self.dead_queue):
            queue.delete()
        self.channel.close()


def bus_for_a_test():
    """Yields a ``Bus`` on a queue of its own, deleted afterwards (the body of each module's fixture)."""
    with Connection(BROKER_URL, transport_options={"confirm_publish": True}) as connection:
        queue = Bus(connection, f"connect.events.test-{uuid.uuid4().hex[:12]}")
        try:
            yield queue
        finally:
            queue.delete()


def raw_body(body) -> bytes:
    return body.encode() if isinstance(body, str) else body  # the client decodes text bodies


def wait_for(predicate, *, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
    return value


class ConsumerThread:
    """An in-process EventConsumer on its own thread (and its own database connection)."""

    def __init__(self, queue_name: str, **options):
        self.consumer = EventConsumer(broker_url=BROKER_URL, queue_name=queue_name, **options)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error = None

    def _run(self):
        try:
            self.consumer.run()
        except BaseException as exc:  # reported by stop()
            self.error = exc
        finally:
            connections.close_all()

    def __enter__(self):
        self.thread.start()
        return self.consumer

    def __exit__(self, *exc_info):
        self.consumer.stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), "the consumer did not stop"
        assert self.error is None, self.error
