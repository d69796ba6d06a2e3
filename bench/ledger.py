"""The ledger's service layer without HTTP: N processes, each with its own database connection.

Scenarios:
- ``credit_distinct``: every process credits its own pool of users (no row is shared);
- ``credit_hot``: every process credits the same user (one account row, the worst case for locks);
- ``hold_capture``: a hold then its capture, on each process's own funded users (one operation = both).

Accounts exist before the clock starts (a first credit creates one), so the figures are steady state.
"""

from __future__ import annotations

import multiprocessing
import time
import uuid

from .common import log, percentile

SCENARIOS = ("credit_distinct", "credit_hot", "hold_capture")
USERS_PER_PROCESS = 200
SOURCE = "bench_ledger"
HOT_USER = "bench-hot-user"


def _users(scenario: str, index: int) -> list[str]:
    if scenario == "credit_hot":
        return [HOT_USER]
    return [f"bench-{scenario}-{index}-{n}" for n in range(USERS_PER_PROCESS)]


def _prepare(scenario: str, processes: int, run_id: str) -> None:
    """Create (and for holds, fund) every account the timed phase touches."""
    from points import services

    users = {user for index in range(processes) for user in _users(scenario, index)}
    amount = 10**9 if scenario == "hold_capture" else 1
    for user in sorted(users):
        services.account_credit(
            source=SOURCE, external_id=f"{run_id}-prep-{scenario}-{user}", user_id=user, amount=amount
        )


def _one(services, scenario: str, user: str, key: str) -> None:
    if scenario == "hold_capture":
        held = services.hold_create(source=SOURCE, external_id=f"{key}-h", user_id=user, amount=10)
        services.hold_capture(source=SOURCE, external_id=f"{key}-c", hold_id=held.transaction.hold_id)
    else:
        services.account_credit(source=SOURCE, external_id=key, user_id=user, amount=1, reason="bench")


def _worker(scenario: str, index: int, start_at: float, seconds: float, run_id: str, results) -> None:
    from django.db import connections

    from points import services

    connections.close_all()  # never share the parent's connection
    users = _users(scenario, index)
    latencies: list[float] = []
    errors = 0
    n = 0
    while time.time() < start_at:
        time.sleep(0.001)
    deadline = start_at + seconds
    cpu_began = time.process_time()
    now = time.perf_counter()
    while time.time() < deadline:
        key = f"{run_id}-{scenario}-{index}-{n}"
        began = now
        try:
            _one(services, scenario, users[n % len(users)], key)
        except Exception:  # counted, never hidden: any error is printed in the table
            errors += 1
        now = time.perf_counter()
        latencies.append(now - began)
        n += 1
    cpu = time.process_time() - cpu_began
    connections.close_all()
    results.put((index, latencies, errors, cpu))


def ledger_measure(*, scenario: str, processes: int, seconds: float) -> dict:
    """Operations/s, latency percentiles and client CPU of one scenario with ``processes`` processes."""
    from django.db import connections

    context = multiprocessing.get_context("fork")
    run_id = uuid.uuid4().hex[:10]
    _prepare(scenario, processes, run_id)
    connections.close_all()
    results = context.Queue()
    start_at = time.time() + 0.5
    workers = [
        context.Process(target=_worker, args=(scenario, index, start_at, seconds, run_id, results))
        for index in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        collected = [results.get(timeout=seconds + 60) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()
    latencies = sorted(value for _, values, _, _ in collected for value in values)
    errors = sum(errors for _, _, errors, _ in collected)
    cpu = sum(cpu for _, _, _, cpu in collected)
    operations = len(latencies) - errors
    result = {
        "ops_per_s": round(operations / seconds, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2) if latencies else None,
        "p99_ms": round(percentile(latencies, 99) * 1000, 2) if latencies else None,
        "errors": errors,
        "client_cpu_ms_per_op": round(1000 * cpu / len(latencies), 2) if latencies else None,
    }
    log(f"ledger {scenario} x{processes}: {result}")
    return result
