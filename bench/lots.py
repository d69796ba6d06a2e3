"""Reversals, points expiry and the batch API (SPEC §9, §13).

- ``reversals_measure``: partial reversals of prepared credits through the service layer, N processes,
  each on its own users (reversals/s);
- ``expiry_measure``: one expiry run over ``lots`` due lots of distinct users (lots/s); the lots are
  made by batched credits, then dated in the past, before the clock starts;
- ``batch_measure``: over HTTP against a running server, single ``POST /internal/credit`` requests
  against ``POST /internal/batch`` of ``batch_size`` credits, one after the other from one client,
  in a balanced order (credits/s of each; target: batched at least 5x single).
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import time
import uuid
from urllib.parse import urlsplit

from .common import balanced_order, log, percentile

SOURCE = "bench_lots"
USERS_PER_PROCESS = 200
PREP_CHUNK = 1000


def _credits(run_id: str, users: list[str], amount: int, *, expires_at=None) -> dict[str, str]:
    """One credit per user, batched; the credit's transaction id per user."""
    from points.batch import ledger_batch

    ids: dict[str, str] = {}
    for start in range(0, len(users), PREP_CHUNK):
        chunk = users[start : start + PREP_CHUNK]
        operations = [
            {"op": "credit", "external_id": f"{run_id}-prep-{user}", "user_id": user, "amount": amount}
            | ({"expires_at": expires_at.isoformat()} if expires_at else {})
            for user in chunk
        ]
        for user, item in zip(chunk, ledger_batch(source=SOURCE, operations=operations, atomic=True), strict=True):
            ids[user] = item.body["transaction_id"]
    return ids


def _reversal_worker(index, originals, start_at, seconds, run_id, results) -> None:
    from django.db import connections

    from points.reversals import transaction_reverse

    connections.close_all()  # never share the parent's connection
    users = sorted(originals)
    latencies: list[float] = []
    errors = n = 0
    while time.time() < start_at:
        time.sleep(0.001)
    deadline = start_at + seconds
    while time.time() < deadline:
        began = time.perf_counter()
        try:
            transaction_reverse(
                source=SOURCE, external_id=f"{run_id}-rev-{index}-{n}", transaction_id=originals[users[n % len(users)]],
                amount=1,
            )  # fmt: skip
        except Exception:  # counted, never hidden
            errors += 1
        latencies.append(time.perf_counter() - began)
        n += 1
    connections.close_all()
    results.put((latencies, errors))


def reversals_measure(*, processes: int, seconds: float) -> dict:
    """Partial reversals (1 point each) of credits of 10^9, each process on its own users."""
    from django.db import connections

    run_id = uuid.uuid4().hex[:10]
    per_process = [
        _credits(run_id, [f"bench-rev-{run_id}-{i}-{n}" for n in range(USERS_PER_PROCESS)], 10**9)
        for i in range(processes)
    ]
    connections.close_all()
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    start_at = time.time() + 0.5
    workers = [
        context.Process(target=_reversal_worker, args=(i, per_process[i], start_at, seconds, run_id, results))
        for i in range(processes)
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
    latencies = sorted(value for values, _ in collected for value in values)
    errors = sum(errors for _, errors in collected)
    result = {
        "reversals_per_s": round((len(latencies) - errors) / seconds, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2) if latencies else None,
        "p99_ms": round(percentile(latencies, 99) * 1000, 2) if latencies else None,
        "errors": errors,
    }
    log(f"lots: reversals x{processes}: {result}")
    return result


def expiry_measure(*, lots: int) -> dict:
    """One expiry run over ``lots`` due lots (one per user), timed alone."""
    from datetime import timedelta

    from django.utils import timezone

    from points.expiry import lots_expire_due
    from points.models import Lot

    run_id = uuid.uuid4().hex[:10]
    log(f"lots: preparing {lots} due lots")
    ids = _credits(
        run_id, [f"bench-exp-{run_id}-{n}" for n in range(lots)], 10, expires_at=timezone.now() + timedelta(days=1)
    )
    Lot.objects.filter(transaction_id__in=list(ids.values())).update(expires_at=timezone.now() - timedelta(seconds=1))
    began = time.perf_counter()
    run = lots_expire_due()
    elapsed = time.perf_counter() - began
    result = {
        "lots": lots,
        "expired_lots": run.expired_lots,
        "skipped": run.skipped,
        "seconds": round(elapsed, 2),
        "lots_per_s": round(run.expired_lots / elapsed, 1) if elapsed else None,
    }
    log(f"lots: expiry run: {result}")
    return result


def _post(conn: http.client.HTTPConnection, path: str, body: dict, key: str) -> tuple[int, dict]:
    conn.request(
        "POST", path, json.dumps(body), {"Content-Type": "application/json", "Authorization": f"Api-Key {key}"}
    )
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def _credits_for(conn, key: str, *, mode: str, prefix: str, seconds: float, batch_size: int) -> dict:
    credits = errors = n = 0
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        if mode == "single":
            status, _ = _post(
                conn, "/internal/credit", {"external_id": f"{prefix}-{n}", "user_id": f"c-{n % 500}", "amount": 1}, key
            )
            credits, errors = credits + (status == 201), errors + (status != 201)
        else:
            operations = [
                {"op": "credit", "external_id": f"{prefix}-{n}-{i}", "user_id": f"c-{(n * batch_size + i) % 500}", "amount": 1}
                for i in range(batch_size)
            ]  # fmt: skip
            status, body = _post(conn, "/internal/batch", {"operations": operations}, key)
            done = sum(item["status"] == 201 for item in body.get("results", [])) if status == 200 else 0
            credits, errors = credits + done, errors + (batch_size - done)
        n += 1
    elapsed = time.perf_counter() - began
    return {"credits": credits, "errors": errors, "seconds": elapsed}


def batch_measure(*, base_url: str, key: str, seconds: float, batch_size: int = 100, rounds: int = 2) -> dict:
    """Credits/s of single credit requests and of batches of ``batch_size`` credits, one client, same run."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    stamp = uuid.uuid4().hex[:8]
    totals = {
        "single": {"credits": 0, "errors": 0, "seconds": 0.0},
        "batch": {"credits": 0, "errors": 0, "seconds": 0.0},
    }
    try:
        for round_, mode in enumerate(balanced_order(("single", "batch"), rounds)):
            run = _credits_for(
                conn, key, mode=mode, prefix=f"{mode}{stamp}-{round_}", seconds=seconds, batch_size=batch_size
            )
            for field in ("credits", "errors", "seconds"):
                totals[mode][field] += run[field]
    finally:
        conn.close()
    result = {
        mode: {**figures, "credits_per_s": round(figures["credits"] / figures["seconds"], 1)}
        for mode, figures in totals.items()
    }
    single = result["single"]["credits_per_s"]
    result["batch_size"] = batch_size
    result["ratio"] = round(result["batch"]["credits_per_s"] / single, 2) if single else None
    log(f"lots: batch vs single over HTTP: {result}")
    return result
