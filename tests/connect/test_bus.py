"""Events from RabbitMQ (SPEC §16) against a real broker (TEST_EVENTS_BROKER_URL, default the local
RabbitMQ) and the transactional test database. Each test uses its own queue, deleted afterwards."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from django.conf import settings

from connect.bus import ERROR_CODE_HEADER, ERROR_DETAILS_HEADER, EventConsumer
from connect.models import EconomicEvent, RewardAction
from points.models import ServiceClient

from .rabbit import BROKER_URL, ConsumerThread, bus_for_a_test, raw_body, wait_for

SOURCE = "quest_service"


def event_body(external_id: str, **fields) -> dict:
    return {
        "external_id": external_id,
        "event_type": "quest.completed",
        "source_service": SOURCE,
        "actor_user_id": "user-1",
        "context": {"base_reward_points": 10},
        **fields,
    }


@pytest.fixture
def bus():
    yield from bus_for_a_test()


@pytest.fixture
def source_client(transactional_db, make_rule):
    make_rule("quest_points", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "10"}])
    return ServiceClient.objects.create(name=SOURCE, scopes=["events:write", "events:read"])


def test_the_same_event_published_twice_is_ingested_once(bus, source_client):
    bus.publish(event_body("quest-1"))
    bus.publish(event_body("quest-1"))
    with ConsumerThread(bus.name) as consumer:
        wait_for(lambda: consumer.counts["ingested"] + consumer.counts["replayed"] == 2, timeout=20, what="2 messages")
    assert consumer.counts == {"ingested": 1, "replayed": 1, "dead_lettered": 0, "requeued": 0}
    event = EconomicEvent.objects.get()
    assert (event.source_service, event.external_id, event.status) == (SOURCE, "quest-1", "processed")
    assert RewardAction.objects.filter(event=event).count() == 1
    assert bus.ready() == 0 and bus.ready(dead=True) == 0


def test_invalid_messages_are_dead_lettered_with_the_error_and_nothing_is_stored(bus, source_client):
    ServiceClient.objects.create(name="referral_service", scopes=["events:write:referral."])
    ServiceClient.objects.create(name="retired_service", scopes=["events:write"], is_active=False)
    bus.publish(event_body("stored-first"))
    cases = {
        b"{not json": "validation_error",
        json.dumps(event_body("missing", actor_user_id="")).encode(): "validation_error",
        json.dumps(event_body("bad-type", event_type="NoDots")).encode(): "validation_error",
        json.dumps(event_body("ctx", context=[1, 2])).encode(): "validation_error",
        json.dumps(event_body("nobody", source_service="nobody_service")).encode(): "not_authenticated",
        json.dumps(event_body("retired", source_service="retired_service")).encode(): "not_authenticated",
        json.dumps(event_body("scoped", source_service="referral_service")).encode(): "permission_denied",
        json.dumps(event_body("stored-first", actor_user_id="someone-else")).encode(): "idempotency_conflict",
        json.dumps([1, 2, 3]).encode(): "validation_error",
        b"[" * 100_000 + b"]" * 100_000: "validation_error",  # nested deeper than the parser recurses
        json.dumps(event_body("big", context={"pad": "x" * 300_000})).encode(): "request_too_large",
        b"\xff\xfe": "validation_error",
    }
    for body in cases:
        bus.publish(body)
    with ConsumerThread(bus.name) as consumer:
        wait_for(
            lambda: consumer.counts["dead_lettered"] == len(cases) and consumer.counts["ingested"] == 1,
            timeout=30,
            what="every message handled",
        )
    dead = bus.dead_letters()
    assert [(raw_body(message.body), message.headers[ERROR_CODE_HEADER]) for message in dead] == list(cases.items())
    details = json.loads(dead[1].headers[ERROR_DETAILS_HEADER])
    assert "actor_user_id" in details
    assert list(EconomicEvent.objects.values_list("external_id", flat=True)) == ["stored-first"]
    assert bus.ready() == 0


def test_messages_a_stopping_consumer_was_given_but_did_not_handle_stay_in_the_queue(bus, source_client):
    for index in range(5):
        bus.publish(event_body(f"held-{index}"))
    consumer = EventConsumer(broker_url=BROKER_URL, queue_name=bus.name, prefetch=5)
    consumer.stop()  # asked to stop before its first message: whatever it is given stays unacknowledged
    consumer.run()
    assert EconomicEvent.objects.count() == 0
    wait_for(lambda: bus.ready() == 5, timeout=10, what="the 5 messages back in the queue")


# --- a real consumer process ------------------------------------------------------------------------


def _database_url(port=None) -> str:
    db = settings.DATABASES["default"]
    credentials = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{credentials}@{db['HOST'] or '127.0.0.1'}:{port or db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def start_consumer(transactional_db, tmp_path):
    started = []

    def start(queue_name: str, *, database_url: str | None = None, prefetch: int = 20):
        log_path = tmp_path / f"consumer-{len(started)}.log"
        log = open(log_path, "w")
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings_test",
            "DATABASE_URL": database_url or _database_url(),
            "EVENTS_BROKER_URL": BROKER_URL,
            "EVENTS_RETRY_BASE_SECONDS": "0.2",
            "EVENTS_RETRY_MAX_SECONDS": "1",
            "PYTHONUNBUFFERED": "1",
        }
        process = subprocess.Popen(
            [sys.executable, "manage.py", "consume_events", "--queue", queue_name, "--prefetch", str(prefetch)],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        process.log_path, process.log_file = log_path, log
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        process.log_file.close()


def _log(process) -> str:
    return process.log_path.read_text(errors="replace")[-4000:]


def test_a_consumer_killed_part_way_then_restarted_ingests_every_event_exactly_once(bus, source_client, start_consumer):
    external_ids = [f"kill-{index:03d}" for index in range(200)]
    for external_id in external_ids:
        bus.publish(event_body(external_id, actor_user_id=f"user-{external_id}"))

    first = start_consumer(bus.name)
    wait_for(lambda: EconomicEvent.objects.count() >= 20 or first.poll() is not None, timeout=60, what="progress")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    killed_at = EconomicEvent.objects.count()
    assert 0 < killed_at < 200, f"the kill must land part way ({killed_at} stored)\n{_log(first)}"

    second = start_consumer(bus.name)
    wait_for(lambda: EconomicEvent.objects.count() == 200, timeout=120, what=f"all 200 events\n{_log(second)}")
    wait_for(lambda: bus.ready() == 0, timeout=20, what="an empty queue")
    second.send_signal(signal.SIGTERM)
    assert second.wait(20) == 0, _log(second)

    stored = sorted(EconomicEvent.objects.values_list("external_id", flat=True))
    assert stored == external_ids
    assert RewardAction.objects.count() == 200  # one per event: none made twice
    assert bus.ready(dead=True) == 0


def test_sigterm_stops_after_the_current_message_and_loses_nothing(bus, source_client, start_consumer):
    for index in range(100):
        bus.publish(event_body(f"term-{index:03d}", actor_user_id=f"user-{index}"))
    consumer = start_consumer(bus.name, prefetch=10)
    wait_for(lambda: EconomicEvent.objects.count() >= 10, timeout=60, what=f"progress\n{_log(consumer)}")
    consumer.send_signal(signal.SIGTERM)
    assert consumer.wait(20) == 0, _log(consumer)
    stored = EconomicEvent.objects.count()
    # Every message is either stored (and acknowledged) or back in the queue; none both.
    wait_for(lambda: bus.ready() == 100 - stored, timeout=10, what=f"{100 - stored} messages back in the queue")
    assert "Stopped:" in _log(consumer)


def test_a_database_outage_leaves_messages_unacknowledged_with_backoff_and_bounded_prefetch(
    bus, source_client, start_consumer
):
    for index in range(10):
        bus.publish(event_body(f"outage-{index}", actor_user_id=f"user-{index}"))
    # Nothing listens on port 9 of this machine: every database call fails as in an outage.
    down = start_consumer(bus.name, database_url=_database_url(port=9), prefetch=3)
    seen_ready = []
    while _log(down).count("database unavailable") < 5:
        seen_ready.append(bus.ready())
        assert down.poll() is None, _log(down)
        time.sleep(0.05)
    assert min(seen_ready) >= 7  # at most 3 messages out with the consumer at any time
    assert bus.ready(dead=True) == 0
    waits = [
        json.loads(line)["retry_in"]
        for line in down.log_path.read_text().splitlines()
        if "database unavailable" in line
    ]
    assert waits[:5] == [0.2, 0.4, 0.8, 1.0, 1.0]  # doubling from EVENTS_RETRY_BASE_SECONDS up to the max
    down.send_signal(signal.SIGTERM)
    assert down.wait(20) == 0, _log(down)
    wait_for(lambda: bus.ready() == 10, timeout=10, what="every message back in the queue")
    assert EconomicEvent.objects.count() == 0

    up = start_consumer(bus.name)
    wait_for(lambda: EconomicEvent.objects.count() == 10, timeout=60, what=_log(up))
    wait_for(lambda: bus.ready() == 0, timeout=10, what="an empty queue")


@pytest.fixture
def empty_database():
    """A database with no tables, as before ``migrate``: created for the test, dropped afterwards."""
    import psycopg

    db = settings.DATABASES["default"]
    name = f"{db['NAME']}_empty_{uuid.uuid4().hex[:8]}"
    admin = dict(host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"], dbname="postgres")
    if db.get("PASSWORD"):
        admin["password"] = db["PASSWORD"]
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _database_url().rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_database_not_migrated_yet_keeps_messages_queued_not_dead_lettered(
    bus, source_client, start_consumer, empty_database
):
    bus.publish(event_body("early-1"))
    early = start_consumer(bus.name, database_url=empty_database)
    wait_for(lambda: "database unavailable" in _log(early), timeout=30, what=f"a retry\n{_log(early)}")
    early.send_signal(signal.SIGTERM)
    assert early.wait(20) == 0, _log(early)
    assert bus.ready(dead=True) == 0
    wait_for(lambda: bus.ready() == 1, timeout=10, what="the message back in the queue")


class _Message:
    """What the consumer reads of a kombu message, and what it did with it."""

    body = json.dumps(event_body("closed-1")).encode()
    headers, properties, content_type, content_encoding = {}, {}, "application/json", "utf-8"

    def __init__(self):
        self.done = []

    def ack(self):
        self.done.append("ack")

    def requeue(self):
        self.done.append("requeue")


def test_a_connection_closed_under_the_consumer_returns_the_message_to_the_queue(monkeypatch):
    """Django raises InterfaceError, which is no DatabaseError, for a connection already closed:
    the message was not stored and must wait in the queue, not go to the dead letters."""
    from django.db import InterfaceError

    from connect import bus as bus_module

    def closed(body):
        raise InterfaceError("connection already closed")

    monkeypatch.setattr(bus_module, "event_message_ingest", closed)
    monkeypatch.setattr(bus_module, "close_old_connections", lambda: None)
    monkeypatch.setattr(bus_module.connections, "close_all", lambda: None)
    consumer = EventConsumer(queue_name="unused", retry_base=0.01, retry_max=0.01)
    message = _Message()

    consumer._on_message(message)

    assert message.done == ["requeue"]
    assert consumer.counts == {"ingested": 0, "replayed": 0, "dead_lettered": 0, "requeued": 1}
