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


def pgbench_measure(*, clients: tuple[int, ...], seconds: int) -> dict[int, dict]:
    """TPS and mean latency of TPC-B-like at each client count; the scratch database is dropped after."""
    database_recreate(PGBENCH_DB)
    try:
        log(f"pgbench: initialising scale {SCALE}")
        _run(["-i", "-q", "-s", str(SCALE)], timeout=300)
        results = {}
        for count in clients:
            threads = min(count, 2)
            output = _run(["-c", str(count), "-j", str(threads), "-T", str(seconds)], timeout=seconds + 120)
            tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", output)
            latency = re.search(r"latency average = ([\d.]+) ms", output)
            if not tps:
                raise BenchError(f"Unexpected pgbench output: {output[-500:]}")
            results[count] = {
                "tps": round(float(tps.group(1)), 1),
                "latency_avg_ms": float(latency.group(1)) if latency else None,
            }
            log(f"pgbench: {count} client(s): {results[count]['tps']} tps")
        return results
    finally:
        database_drop(PGBENCH_DB)
