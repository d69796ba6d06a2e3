"""The baseline: pgbench's built-in TPC-B-like script on a scratch database, same server, same machine."""

from __future__ import annotations

import re
import subprocess

from .common import PG_HOST, PG_PORT, PG_USER, PGBENCH_DB, BenchError, database_drop, database_recreate, log, program

SCALE = 10


def _pgbench() -> str:
    return program("pgbench", extra_dirs=("/usr/lib/postgresql/*/bin",))


def _run(args: list[str], timeout: float) -> str:
    argv = [_pgbench(), "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER, *args, PGBENCH_DB]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise BenchError(f"pgbench {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return done.stdout + done.stderr


def pgbench_prepare() -> None:
    """A fresh scratch database initialised at a small scale (pgbench_drop removes it)."""
    database_recreate(PGBENCH_DB)
    log(f"pgbench: initialising scale {SCALE}")
    _run(["-i", "-q", "-s", str(SCALE)], timeout=300)


def pgbench_drop() -> None:
    database_drop(PGBENCH_DB)


def pgbench_measure(*, clients: int, seconds: int) -> dict:
    """TPS and mean latency of TPC-B-like with ``clients`` connections."""
    output = _run(["-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds)], timeout=seconds + 120)
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", output)
    latency = re.search(r"latency average = ([\d.]+) ms", output)
    if not tps:
        raise BenchError(f"Unexpected pgbench output: {output[-500:]}")
    result = {"tps": round(float(tps.group(1)), 1), "latency_avg_ms": float(latency.group(1)) if latency else None}
    log(f"pgbench: {clients} client(s): {result['tps']} tps")
    return result
