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
PREP_CHUNK = 5000


def _credits(run_id: str, users: list[str], amount: int, *, expires_at=None) -> dict[str, str]:
    """One credit per user, posted through the batch ledger service a chunk at a time (one statement
    per table per chunk); the credit's transaction id per user."""
    from points.services import CreditIn, account_credit_many

    ids: dict[str, str] = {}
    for start in range(0, len(users), PREP_CHUNK):
        chunk = users[start : start + PREP_CHUNK]
        credits = [
            CreditIn(external_id=f"{run_id}-prep-{user}", user_id=user, amount=amount, expires_at=expires_at)
            for user in chunk
        ]
        posted = account_credit_many(source=SOURCE, credits=credits)
        for user, credit in zip(chunk, credits, strict=True):
            ids[user] = str(posted[credit.external_id].transaction.pk)
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
    prepared_from = time.perf_counter()
    ids = _credits(
        run_id, [f"bench-exp-{run_id}-{n}" for n in range(lots)], 10, expires_at=timezone.now() + timedelta(days=1)
    )
    Lot.objects.filter(account__user_id__startswith=f"bench-exp-{run_id}-").update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    log(f"lots: {len(ids)} due lots prepared in {time.perf_counter() - prepared_from:.1f} s")
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


def _backend_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a PostgreSQL backend on this machine (None when it runs elsewhere)."""
    import os
    from pathlib import Path

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lot_cost_measure(*, credits: int = 1000, rounds: int = 6) -> dict:
    """What a credit's lot costs (issue 21): the one-statement credit as posted, and the same statement
    with its lot INSERT cut out, alternated in one process on the same users (``rounds`` runs of
    ``credits`` each, in a balanced order). Client CPU (this process) and PostgreSQL CPU (its backend,
    from /proc when the database runs on this machine) per credit, medians of the runs, and the
    statements per credit. The credits without a lot go to users of their own, so no later phase
    meets an account whose lots do not add up to its balance."""
    import re
    import statistics

    from django.db import connection

    from config.db import column_values
    from points import services
    from points.models import SystemAccount, Transaction
    from points.statements import ledger_sql

    run_id = uuid.uuid4().hex[:10]
    users = {
        variant: [f"bench-lotcost-{variant}-{run_id}-{n}" for n in range(USERS_PER_PROCESS)]
        for variant in ("with_lot", "without_lot")
    }
    for variant_users in users.values():
        _credits(run_id, variant_users, 1)
    counterpart = services.system_account_id(SystemAccount.ISSUED)
    cut = re.compile(r"\), lot AS \(.*?\n    \)\n", re.S)
    state = {"n": 0, "statements": 0}

    def count(execute, sql, params, many, context):
        state["statements"] += 1
        return execute(sql, params, many, context)

    def one(variant: str) -> None:
        state["n"] += 1
        txn = Transaction(
            kind=Transaction.Kind.CREDIT, source=SOURCE, external_id=f"{run_id}-lotcost-{state['n']}", amount=1,
            reason="bench", metadata={}, request_hash="0" * 64,
        )  # fmt: skip
        columns, values = column_values(txn, exclude=("account", "balance_after", "held_after"))
        sql = ledger_sql(services._CREDIT_SQL, tuple(columns))
        params = [
            1, users[variant][state["n"] % USERS_PER_PROCESS], txn.source, txn.external_id, *values,
            services.Part.AVAILABLE, 1, counterpart, services.Part.AVAILABLE, -1,
            uuid.uuid4(), 1, 1, None, txn.created_at,
        ]  # fmt: skip
        if variant == "without_lot":
            sql, params = cut.sub(")\n", sql), params[:-5]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            if cursor.fetchone() is None:
                raise RuntimeError("a bench credit was not posted in one statement")

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    figures: dict[str, list[tuple]] = {"with_lot": [], "without_lot": []}
    for variant in balanced_order(("with_lot", "without_lot"), rounds):
        one(variant)  # prepared on this connection before the clock starts
        state["statements"] = 0
        with connection.execute_wrapper(count):
            pg_began, cpu_began = _backend_cpu_seconds(backend), time.process_time()
            for _ in range(credits):
                one(variant)
            cpu, pg_ended = time.process_time() - cpu_began, _backend_cpu_seconds(backend)
        pg = None if pg_began is None or pg_ended is None else pg_ended - pg_began
        figures[variant].append((1000 * cpu / credits, None if pg is None else 1000 * pg / credits,
                                 state["statements"] / credits))  # fmt: skip

    def median(variant: str, index: int) -> float | None:
        values = [item[index] for item in figures[variant] if item[index] is not None]
        return round(statistics.median(values), 3) if values else None

    result = {
        variant: {
            "client_cpu_ms": median(variant, 0),
            "pg_cpu_ms": median(variant, 1),
            "statements": median(variant, 2),
        }
        for variant in figures
    }
    for key in ("client_cpu_ms", "pg_cpu_ms"):
        with_lot, without = result["with_lot"][key], result["without_lot"][key]
        result[f"lot_{key}"] = None if with_lot is None or without is None else round(with_lot - without, 3)
    result["credits_per_run"], result["runs"] = credits, len(figures["with_lot"])
    log(f"lots: lot bookkeeping per credit: {result}")
    return result
