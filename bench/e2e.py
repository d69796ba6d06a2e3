"""End to end: events posted at full rate while Celery workers dispatch; measured until the last credit.

The clock starts with the first POST and stops at the ``completed_at`` of the last RewardAction the run
made, read from the database, which is what a user would wait for. The doorbells the workers received
(broker messages) are counted from their log, per event posted. The end-to-end run sits between two
runs of the same events with no worker (``events_beside_measure``), so its ratio to HTTP events compares
runs made minutes apart on a machine whose speed drifts by tens of percent in minutes.

Beside it, dispatch alone: one worker process draining a backlog of points actions stored beforehand.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from .common import (
    APP_DB,
    BIN,
    REDIS_URL,
    BenchError,
    Started,
    app_environment,
    database_settle,
    log,
    machine_cpu_seconds,
    processes_cpu_seconds,
    redis_flush,
    start,
)
from .http import Server, wrk_run

DRAIN_TIMEOUT_SECONDS = 180
DRAIN_TASK = "connect.tasks.drain_reward_actions"
BACKLOG_SOURCE = "bench_backlog"


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


def _earlier_actions_set_aside() -> None:
    """Cancel what earlier phases left pending (they ran without workers): a drain takes every due
    action, and a measured run must dispatch only its own."""
    from connect.models import RewardAction

    RewardAction.objects.filter(status=RewardAction.Status.PENDING).update(
        status=RewardAction.Status.CANCELLED, cancel_reason="bench: left by an earlier phase"
    )


def _settled_start() -> None:
    """The state every run of this phase starts from: earlier actions set aside, the database settled
    (so no run pays for the dead rows of the one before it)."""
    _earlier_actions_set_aside()
    database_settle(APP_DB)


def events_beside_measure(*, server: Server, key: str, seconds: int, connections: int) -> dict:
    """Events posted at full rate with no worker running, from the state the end-to-end run starts
    from: the rate it is compared with."""
    _settled_start()
    return wrk_run(
        server=server,
        mode="events",
        key=key,
        prefix=f"beside{time.time_ns()}",
        seconds=seconds,
        connections=connections,
    )


def doorbells_received(log_text: str) -> int:
    """Messages of the dispatch task a worker received, from its log (Celery logs each at INFO)."""
    return sum(1 for line in log_text.splitlines() if f"{DRAIN_TASK}[" in line and "received" in line)


def _progress(actions) -> tuple[int, int, int, datetime | None]:
    from django.db.models import Count, Max, Q

    from connect.models import RewardAction

    row = actions.aggregate(
        total=Count("id"),
        completed=Count("id", filter=Q(status=RewardAction.Status.COMPLETED)),
        failed=Count("id", filter=Q(status=RewardAction.Status.FAILED)),
        last=Max("completed_at"),
    )
    return row["total"], row["completed"], row["failed"], row["last"]


def e2e_measure(*, server: Server, key: str, seconds: int, connections: int, workers: int) -> tuple[dict, dict]:
    """Events/s from the first post to the last completed credit, and the workers' memory."""
    redis_flush()  # earlier phases ran without workers: their queued doorbells are not this run's
    _settled_start()
    worker = celery_start(concurrency=workers)
    try:
        worker_cpu_before, host_before = worker.cpu_seconds(), machine_cpu_seconds()
        web_before, postgres_before = server.process.cpu_seconds(), processes_cpu_seconds("postgres")
        since = datetime.now(UTC)
        began = time.time()
        posted = wrk_run(
            server=server, mode="events", key=key, prefix=f"e2e{int(began)}", seconds=seconds, connections=connections
        )
        load_ended = time.time()
        deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
        from connect.models import RewardAction

        while True:
            worker.sample_memory()
            total, completed, failed, last = _progress(RewardAction.objects.filter(created_at__gte=since))
            if total and completed + failed >= total:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.25)
        worker_cpu, host_cpu = worker.cpu_seconds() - worker_cpu_before, machine_cpu_seconds() - host_before
        web_cpu = server.process.cpu_seconds() - web_before
        postgres_cpu = processes_cpu_seconds("postgres") - postgres_before
        memory = worker.memory_summary()
    finally:
        worker.stop(timeout=30)
    messages = doorbells_received(worker.log_path.read_text(errors="replace"))
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
        "messages": messages,
        "messages_per_event": round(messages / events, 3) if events else None,
        "worker_cpu_ms_per_action": round(1000 * worker_cpu / completed, 2) if completed else None,
        # Everything on the machine from the first POST until every action was done (or the wait gave up).
        "host_cpu_ms_per_event": round(1000 * host_cpu / events, 2) if events else None,
        # Where it went: the web workers, every PostgreSQL process, and the Celery processes (per event).
        "web_cpu_ms_per_event": round(1000 * web_cpu / events, 2) if events else None,
        "postgres_cpu_ms_per_event": round(1000 * postgres_cpu / events, 2) if events else None,
        "worker_cpu_ms_per_event": round(1000 * worker_cpu / events, 2) if events else None,
    }
    log(f"e2e: {result}")
    return result, memory


def _backlog_store(actions: int) -> None:
    """``actions`` pending points actions, two per event, to users whose accounts exist."""
    from django.utils import timezone

    from connect.models import EconomicEvent, RewardAction
    from rules.models import Rule

    from .http import USERS

    rule = Rule.objects.filter(event_type="quest.completed", rewards__reward_type="points").distinct().first()
    if rule is None:
        raise BenchError("the demo rules have no points rule for quest.completed to file the backlog under")
    now = timezone.now()
    for start_at in range(0, actions // 2, 1000):
        events = EconomicEvent.objects.bulk_create(
            [
                EconomicEvent(
                    source_service=BACKLOG_SOURCE, external_id=f"backlog-{n}", event_type="quest.completed",
                    actor_user_id=f"a-{n % USERS}", primary_subject_user_id=f"s-{n % USERS}",
                    payload_hash="0" * 64, status=EconomicEvent.Status.PROCESSED,
                )
                for n in range(start_at, min(start_at + 1000, actions // 2))
            ]
        )  # fmt: skip
        RewardAction.objects.bulk_create(
            [
                RewardAction(
                    event=event, rule=rule, rule_code=rule.code, rule_version=rule.version, target_user_id=target,
                    reward_type="points", amount=amount, status=RewardAction.Status.PENDING,
                    next_attempt_at=now, created_at=now, updated_at=now,
                )
                for event in events
                for target, amount in ((event.actor_user_id, 40), (event.primary_subject_user_id, 20))
            ]
        )  # fmt: skip


def dispatch_backlog_measure(*, actions: int) -> dict:
    """Store ``actions`` pending points actions, start one worker process, ring one doorbell and
    measure until the last one is completed: actions/s, the worker's and the machine's CPU per action."""
    from config.celery import app
    from connect.models import RewardAction

    redis_flush()
    _earlier_actions_set_aside()
    log(f"dispatch backlog: storing {actions} pending points actions")
    _backlog_store(actions)
    database_settle(APP_DB)
    backlog = RewardAction.objects.filter(event__source_service=BACKLOG_SOURCE)
    worker = celery_start(concurrency=1)
    try:
        worker_before, host_before, began = worker.cpu_seconds(), machine_cpu_seconds(), time.time()
        # To the broker the worker reads (app_environment's), whatever broker this process is set up with.
        with app.connection_for_write(REDIS_URL) as connection:
            app.send_task(DRAIN_TASK, args=([],), producer=app.amqp.Producer(connection), ignore_result=True)
        deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
        while True:
            total, completed, failed, last = _progress(backlog)
            if completed + failed >= total or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        worker_cpu, host_cpu = worker.cpu_seconds() - worker_before, machine_cpu_seconds() - host_before
    finally:
        worker.stop(timeout=30)
        redis_flush()
    if completed != total:
        raise BenchError(f"the backlog drain completed {completed} of {total} actions; see {worker.log_path}")
    seconds = max((last.timestamp() if last else time.time()) - began, 1e-9)
    result = {
        "actions": total,
        "workers": 1,
        "seconds": round(seconds, 2),
        "per_s": round(total / seconds, 1),
        "worker_cpu_ms_per_action": round(1000 * worker_cpu / total, 3),
        "host_cpu_ms_per_action": round(1000 * host_cpu / total, 3),
    }
    log(f"dispatch backlog: {result}")
    return result
