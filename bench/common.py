"""What every part of the benchmark shares: the environment, scratch databases, processes, statistics."""

from __future__ import annotations

import math
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench-results"
LOG_DIR = RESULTS_DIR / "logs"
BIN = Path(sys.executable).parent

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = os.environ.get("BENCH_PG_USER", "root")
# Scratch names; overridable so two checkouts can measure on one machine without sharing them.
APP_DB = os.environ.get("BENCH_APP_DB", "bench_app")
PGBENCH_DB = os.environ.get("BENCH_PGBENCH_DB", "bench_pgbench")
REDIS_URL = f"redis://127.0.0.1:6379/{int(os.environ.get('BENCH_REDIS_DB', '7'))}"
# One secret for every process of a run (web, workers, this one), never a fixed value.
_SECRET_KEY = os.environ.get("BENCH_SECRET_KEY") or secrets.token_urlsafe(48)


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says what to fix."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- environment of every process the benchmark starts ----------------------------------------


def app_environment() -> dict[str, str]:
    """Production settings on the scratch database: DEBUG off, a real broker, a shared cache.

    The throttle stays on (same code path as production) with a rate no run reaches; the window is a
    second because DRF's throttle keeps one timestamp per request of the window in the cache entry.
    """
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "bench.settings",
            "DEBUG": "0",
            "SECRET_KEY": _SECRET_KEY,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SECURE_SSL_REDIRECT": "0",
            "DATABASE_URL": f"postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{APP_DB}",
            "CELERY_BROKER_URL": REDIS_URL,
            "CACHE_URL": "rediscache://127.0.0.1:6379/7",
            "API_THROTTLE_RATE": env.get("BENCH_THROTTLE_RATE", "100000/s"),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        }
    )
    return env


def django_setup() -> None:
    """Configure Django in this process with the benchmark's environment (idempotent)."""
    os.environ.update(app_environment())
    import django

    django.setup()


# --- PostgreSQL and Redis ---------------------------------------------------------------------


def pg_admin(sql: str, dbname: str = "postgres") -> None:
    import psycopg

    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, autocommit=True) as conn:
        conn.execute(sql)


def database_settle(dbname: str) -> None:
    """Start a measured run from a settled database: dead rows an earlier phase left vacuumed away,
    planner statistics fresh, dirty pages flushed. Without it a run pays for the previous phase's
    garbage (a cluster may run with autovacuum off) and for a checkpoint that falls inside it."""
    pg_admin("VACUUM ANALYZE", dbname=dbname)
    pg_admin("CHECKPOINT", dbname=dbname)


def pg_scalar(sql: str, dbname: str = "postgres"):
    import psycopg

    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, autocommit=True) as conn:
        return conn.execute(sql).fetchone()[0]


def database_recreate(name: str) -> None:
    pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    pg_admin(f'CREATE DATABASE "{name}"')


def database_drop(name: str) -> None:
    pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def redis_flush() -> None:
    """Empty the benchmark's own Redis database (number 7) and nothing else."""
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


def services_check() -> None:
    import psycopg
    import redis

    try:
        psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=3).close()
    except psycopg.Error as exc:
        raise BenchError(f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} as {PG_USER}: {exc}") from exc
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        raise BenchError(f"Redis is not reachable at 127.0.0.1:6379: {exc}") from exc


def pg_role_check(*, checkpoint: bool, user: str = PG_USER) -> None:
    """Refuse to start, before anything is created or measured, when the PostgreSQL role lacks what
    the run needs: creating its scratch databases and, for the rule-scaling phase, ``CHECKPOINT``
    before each run (a superuser, or a member of ``pg_checkpoint`` from PostgreSQL 15)."""
    import psycopg

    sql = """
        SELECT r.rolsuper, r.rolcreatedb,
               EXISTS (SELECT 1 FROM pg_roles c WHERE c.rolname = 'pg_checkpoint' AND pg_has_role(r.oid, c.oid, 'MEMBER'))
        FROM pg_roles r WHERE r.rolname = %s
    """
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=user, dbname="postgres", autocommit=True) as conn:
        superuser, createdb, checkpointer = conn.execute(sql, [user]).fetchone()
    missing = []
    if not (superuser or createdb):
        missing.append(f"it cannot create the scratch databases (ALTER ROLE {user} CREATEDB)")
    if checkpoint and not (superuser or checkpointer):
        missing.append(
            f"it cannot run the CHECKPOINT before each rule-scaling run (GRANT pg_checkpoint TO {user}, "
            "PostgreSQL 15 or later; or leave the phase out with --only)"
        )
    if missing:
        raise BenchError(
            f"the PostgreSQL role {user} lacks what the benchmark needs: {'; '.join(missing)}. "
            "BENCH_PG_USER names another role."
        )


# --- external programs ----------------------------------------------------------------------------


def program(name: str, *, debian_package: str | None = None, extra_dirs: tuple[str, ...] = ()) -> str:
    """Path of a program; installs its Debian package when missing and apt-get is usable."""
    found = shutil.which(name)
    if found:
        return found
    for pattern in extra_dirs:
        for candidate in sorted(Path("/").glob(pattern.lstrip("/")), reverse=True):
            if (candidate / name).exists():
                return str(candidate / name)
    if debian_package and shutil.which("apt-get"):
        log(f"{name} is missing; installing the Debian package {debian_package}")
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.STDOUT}
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        installed = subprocess.run(["apt-get", "install", "-y", "-qq", debian_package], env=env, **quiet)
        if installed.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, **quiet)
            subprocess.run(["apt-get", "install", "-y", "-qq", debian_package], env=env, **quiet)
        found = shutil.which(name)
        if found:
            return found
    hint = f" (Debian package {debian_package})" if debian_package else ""
    raise BenchError(f"{name} is required{hint} and is not installed; install it and run `make bench` again.")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Started:
    """A process the benchmark started; it and its children are stopped by its own id."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    peak_rss_kib: dict[int, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tree(self) -> list[int]:
        """This process and its descendants (from /proc), parents first."""
        pids, queue = [], [self.pid]
        while queue:
            pid = queue.pop(0)
            pids.append(pid)
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                children = []
            queue.extend(int(child) for child in children)
        return pids

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by this process and its live descendants."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.tree():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        return total / ticks

    def sample_memory(self) -> None:
        """Remember each process's high-water RSS (VmHWM) seen so far."""
        for pid in self.tree():
            hwm = _status_kib(pid, "VmHWM")
            if hwm:
                self.peak_rss_kib[pid] = max(self.peak_rss_kib.get(pid, 0), hwm)

    def memory_summary(self) -> dict:
        self.sample_memory()
        peaks = self.peak_rss_kib
        parent = peaks.get(self.pid, 0)
        children = [kib for pid, kib in peaks.items() if pid != self.pid]
        return {
            "parent_peak_mib": round(parent / 1024, 1),
            "child_peak_mib": round(max(children) / 1024, 1) if children else None,
            "children": len(children),
            "sum_of_peaks_mib": round(sum(peaks.values()) / 1024, 1),
        }

    def stop(self, timeout: float = 15) -> None:
        if self.popen.poll() is not None:
            return
        try:
            self.sample_memory()
        except OSError:
            pass
        try:
            os.killpg(self.pid, signal.SIGTERM)  # the group this process leads; started by us
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)


def machine_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy, summed over its cores (/proc/stat: user, nice,
    system, irq and softirq time; not idle, iowait or the time the hypervisor gave to others).

    Per operation it is what one operation costs everything involved (web workers, PostgreSQL,
    Redis, the load generator, Celery), which bounds the rate the cores allow: cores ÷ that cost.
    """
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(value) for value in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def processes_cpu_seconds(command: str) -> float:
    """User + system CPU time used so far by the processes whose command is ``command`` (/proc), such
    as PostgreSQL's: the live ones, plus what the exited ones left in their parent's account (the
    postmaster's reaped children: backends of closed connections, autovacuum workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, tail = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        stats[int(stat.parent.name)] = (head.split("(", 1)[1], tail.split())
    total = 0
    for name, fields in stats.values():
        if name != command:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
        parent = stats.get(int(fields[1]))
        if parent is None or parent[0] != command:
            total += int(fields[13]) + int(fields[14])  # cutime, cstime: its children that exited
    return total / ticks


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def start(name: str, argv: list[str], env: dict[str, str]) -> Started:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{name}.log"
    handle = open(log_path, "wb")  # noqa: SIM115 (kept open for the child's lifetime)
    popen = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    handle.close()
    return Started(name=name, popen=popen, log_path=log_path)


def profiler_start(pid: int, seconds: float, path: Path) -> subprocess.Popen:
    """Sample one process with py-spy (from PyPI) for ``seconds``; flamegraph SVG at ``path``."""
    spy = BIN / "py-spy"
    if not spy.exists():
        raise BenchError("--profile needs py-spy in the virtualenv (pip install -r requirements.txt)")
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = [str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
            "--nonblocking", "--output", str(path)]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_http_ok(url: str, started: Started, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if started.popen.poll() is not None:
            raise BenchError(f"{started.name} exited ({started.popen.returncode}); see {started.log_path}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise BenchError(f"{url} did not answer 200 within {timeout:.0f} s ({last}); see {started.log_path}")


# --- statistics and the machine ---------------------------------------------------------------


def percentile(sorted_values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), math.ceil(pct * len(sorted_values) / 100)))
    return sorted_values[rank - 1]


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine() -> dict:
    meminfo = Path("/proc/meminfo").read_text()
    total_kib = int(next(line for line in meminfo.splitlines() if line.startswith("MemTotal:")).split()[1])
    model = ""
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(total_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": pg_scalar("SHOW server_version"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average_at_start": load_average(),
    }


# --- combining runs ----------------------------------------------------------------------------


def balanced_order(items: tuple, rounds: int) -> list:
    """Items in a balanced order (ABC CBA ABC ...): each item's runs sit, on average, at the same
    point of the phase, so a machine that speeds up or slows down during it (this kind of shared VM
    drifts by tens of percent within minutes) biases no item against another."""
    order: list = []
    for round_index in range(rounds):
        order.extend(items if round_index % 2 == 0 else tuple(reversed(items)))
    return order


def runs_combined(runs: list[dict]) -> dict:
    """Several wrk runs of one configuration as one figure: rates over the summed time, the worst p99."""
    seconds = sum(run["seconds"] for run in runs)
    requests = sum(run["requests"] for run in runs)
    cpu = [run["web_cpu_ms_per_request"] * run["requests"] for run in runs if run["web_cpu_ms_per_request"]]
    host = [run["host_cpu_ms_per_request"] * run["requests"] for run in runs if run.get("host_cpu_ms_per_request")]
    return {
        "requests": requests,
        "created": sum(run["created"] for run in runs),
        "seconds": round(seconds, 2),
        "rps": round(sum(run["created"] for run in runs) / seconds, 1) if seconds else 0.0,
        "p50_ms": round(sorted(run["p50_ms"] for run in runs)[len(runs) // 2], 2),
        "p99_ms": max(run["p99_ms"] for run in runs),
        "max_ms": max(run["max_ms"] for run in runs),
        "errors": sum(run["errors"] for run in runs),
        "web_cpu_ms_per_request": round(sum(cpu) / requests, 2) if cpu and requests else None,
        "host_cpu_ms_per_request": round(sum(host) / requests, 2) if host and requests else None,
        "connections": runs[0]["connections"],
        "rps_runs": [run["rps"] for run in runs],
    }
