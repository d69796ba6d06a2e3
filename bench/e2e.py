"""End to end: events posted at full rate while Celery workers dispatch; measured until the last credit.

The clock starts with the first POST and stops at the ``completed_at`` of the last RewardAction the run
made, read from the database, which is what a user would wait for.

Beside it, what the same worker spends on a task that does nothing: the least any design with one
Celery task per action (SPEC §8) costs per action on this machine, whatever the task does.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from .common import (
    BIN,
    REDIS_URL,
    BenchError,
    Started,
    app_environment,
    log,
    machine_cpu_seconds,
    redis_flush,
    start,
)
from .http import Server, wrk_run

DRAIN_TIMEOUT_SECONDS = 180
# A registered task of Celery itself that returns its arguments: a message through the broker, the
# worker and its pool with nothing done in the task. Acks late with time limits, as dispatch does.
NOOP_TASK = "celery.accumulate"


def celery_start(*, concurrency: int) -> Started:
    argv = [
        str(BIN / "celery"), "-A", "config", "worker",
        "--concurrency", str(concurrency), "--loglevel", "INFO", "-n", "bench@%h",
    ]  # fmt: skip
    worker = start("celery", argv, app_environment())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if worker.popen.poll() is not None:
            raise BenchError(f"the Celery worker exited ({worker.popen.returncode}); see {worker.log_path}")
        if "ready." in worker.log_path.read_text(errors="replace"):
            return worker
        time.sleep(0.2)
    worker.stop()
    raise BenchError(f"the Celery worker did not become ready in 60 s; see {worker.log_path}")


def _progress(since: datetime) -> tuple[int, int, int, datetime | None]:
    from django.db.models import Count, Max, Q

    from connect.models import RewardAction

    row = RewardAction.objects.filter(created_at__gte=since).aggregate(
        total=Count("id"),
        completed=Count("id", filter=Q(status=RewardAction.Status.COMPLETED)),
        failed=Count("id", filter=Q(status=RewardAction.Status.FAILED)),
        last=Max("completed_at"),
    )
    return row["total"], row["completed"], row["failed"], row["last"]


def e2e_measure(*, server: Server, key: str, seconds: int, connections: int, workers: int) -> tuple[dict, dict]:
    """Events/s from the first post to the last completed credit, and the workers' memory."""
    redis_flush()  # earlier phases ran without workers: their queued doorbells are not this run's
    worker = celery_start(concurrency=workers)
    try:
        worker_cpu_before, host_before = worker.cpu_seconds(), machine_cpu_seconds()
        since = datetime.now(UTC)
        began = time.time()
        posted = wrk_run(
            server=server, mode="events", key=key, prefix=f"e2e{int(began)}", seconds=seconds, connections=connections
        )
        load_ended = time.time()
        deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
        while True:
            worker.sample_memory()
            total, completed, failed, last = _progress(since)
            if total and completed + failed >= total:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.25)
        worker_cpu, host_cpu = worker.cpu_seconds() - worker_cpu_before, machine_cpu_seconds() - host_before
        memory = worker.memory_summary()
    finally:
        worker.stop(timeout=30)
    finished = last.timestamp() if last else time.time()
    elapsed = max(finished - began, 1e-9)
    events = posted["created"]
    result = {
        "events": events,
        "actions": total,
        "completed": completed,
        "failed": failed,
        "post_seconds": round(load_ended - began, 2),
        "seconds_to_last_credit": round(elapsed, 2),
        "drain_after_load_s": round(max(0.0, finished - load_ended), 2),
        "events_per_s": round(events / elapsed, 1) if completed == total else None,
        "actions_per_s": round(completed / elapsed, 1),
        "post_rps": posted["rps"],
        "post_p99_ms": posted["p99_ms"],
        "errors": posted["errors"] + failed,
        "complete": completed == total,
        "workers": workers,
        "worker_cpu_ms_per_action": round(1000 * worker_cpu / completed, 2) if completed else None,
        # Everything on the machine from the first POST until every action was done (or the wait gave up).
        "host_cpu_ms_per_event": round(1000 * host_cpu / events, 2) if events else None,
    }
    log(f"e2e: {result}")
    return result, memory


def _queue_backlog(client, queue: str) -> int:
    """Messages still in the queue or taken but not yet acknowledged (kombu's unacked hash)."""
    from kombu.transport.redis import Channel

    return client.llen(queue) + client.hlen(Channel.unacked_key)


def task_floor_measure(*, messages: int, workers: int) -> dict:
    """Queue ``messages`` runs of a task that does nothing, start the worker as the end-to-end run
    does, and measure its drain: messages/s, the worker's and the whole machine's CPU per message."""
    import redis

    from config.celery import app

    if NOOP_TASK not in app.tasks:
        raise BenchError(f"Celery has no task {NOOP_TASK}: the no-op drain needs a registered task that does nothing")
    redis_flush()
    queue = app.conf.task_default_queue
    # To the broker the worker reads (app_environment's), whatever broker this process is set up with.
    with app.connection_for_write(REDIS_URL) as connection:
        producer = app.amqp.Producer(connection)
        for n in range(messages):
            app.send_task(NOOP_TASK, args=(n,), producer=producer, ignore_result=True)
    client = redis.Redis.from_url(REDIS_URL)
    worker = celery_start(concurrency=workers)
    try:
        # The worker drains from the moment it is ready; what is left now is what gets measured.
        worker_before, host_before, began = worker.cpu_seconds(), machine_cpu_seconds(), time.monotonic()
        measured = _queue_backlog(client, queue)
        deadline = began + DRAIN_TIMEOUT_SECONDS
        while _queue_backlog(client, queue) and time.monotonic() < deadline:
            time.sleep(0.01)
        seconds = time.monotonic() - began
        worker_cpu, host_cpu = worker.cpu_seconds() - worker_before, machine_cpu_seconds() - host_before
        left = _queue_backlog(client, queue)
    finally:
        worker.stop(timeout=30)
        redis_flush()
    if "unregistered task" in worker.log_path.read_text(errors="replace"):
        # A rejected message never reaches the pool: the drain would look cheaper than a real task.
        raise BenchError(f"the worker did not know {NOOP_TASK}; see {worker.log_path}")
    if left or measured < messages // 2:
        raise BenchError(
            f"the no-op drain measured {measured} of {messages} messages and left {left}; see {worker.log_path}"
        )
    result = {
        "task": NOOP_TASK,
        "workers": workers,
        "messages": measured,
        "per_s": round(measured / seconds, 1),
        "worker_cpu_ms_per_message": round(1000 * worker_cpu / measured, 3),
        "host_cpu_ms_per_message": round(1000 * host_cpu / measured, 3),
    }
    log(f"task floor: {result}")
    return result
