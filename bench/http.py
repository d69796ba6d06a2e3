"""HTTP through gunicorn with the production settings, driven by wrk (C, event loop, Lua per request).

wrk was chosen over Python load generators because on a small machine the generator shares the CPU
with the server: wrk needs a few percent of one core for what a Python client would need a whole one.
Its Lua script gives every request a unique external_id, counts answers by status, and for a fixed
rate paces requests from a monotonic clock (LuaJIT FFI), so "half the maximum rate" is a real rate.
"""

from __future__ import annotations

import json
import runpy
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .common import (
    BIN,
    ROOT,
    BenchError,
    Started,
    app_environment,
    free_port,
    log,
    machine_cpu_seconds,
    processes_cpu_seconds,
    profiler_start,
    program,
    start,
    wait_http_ok,
)

SOURCE = "bench_client"
# Requests cycle through this many users (a-N, s-N for events, c-N for credits), whose accounts
# exist before any clock starts (bench.app): the steady state, where most rewards go to known users.
USERS = 500

# One template; %(...)s parts are filled per run. Globals (not locals) are what done() reads per thread.
_LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local threads = {}
local thread_count = 0
function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Api-Key %(key)s"

local mode = "%(mode)s"
local prefix = "%(prefix)s"
local source = "%(source)s"
local types = %(types)d
local users = %(users)d
local interval = %(interval_ms)f
local next_slot = nil
n = 0
ok = 0
bad = 0
last_bad = 0

function init(args)
  prefix = prefix .. "-" .. tostring(tid)
end

function request()
  n = n + 1
  local xid = prefix .. "-" .. n
  local u = n %% users
  local body
  if mode == "events" then
    body = '{"external_id":"' .. xid .. '","event_type":"quest.completed","source_service":"' .. source ..
      '","actor_user_id":"a-' .. u .. '","primary_subject_user_id":"s-' .. u ..
      '","context":{"base_reward_points":40,"total_quests_completed":1}}'
  elseif mode == "rules" then
    body = '{"external_id":"' .. xid .. '","event_type":"bench.t' .. string.format("%%02d", n %% types) ..
      '","source_service":"' .. source .. '","actor_user_id":"a-' .. u .. '","primary_subject_user_id":"s-' .. u ..
      '","context":{"points":10,"level":0}}'
  else
    body = '{"external_id":"' .. xid .. '","user_id":"c-' .. u .. '","amount":5,"reason":"bench","metadata":{"n":' .. n .. '}}'
  end
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  if status == 201 then ok = ok + 1 else bad = bad + 1; last_bad = status end
end

%(delay)s

function done(summary, latency, requests)
  local good, wrong, last = 0, 0, 0
  for _, t in ipairs(threads) do
    good = good + t:get("ok")
    wrong = wrong + t:get("bad")
    if t:get("last_bad") ~= 0 then last = t:get("last_bad") end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%%d,"duration_us":%%d,"created":%%d,"not_created":%%d,"last_bad_status":%%d,' ..
    '"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"max_us":%%d,"mean_us":%%.1f,' ..
    '"connect_errors":%%d,"read_errors":%%d,"write_errors":%%d,"timeouts":%%d}\n',
    summary.requests, summary.duration, good, wrong, last,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.timeout))
end
"""

_DELAY = r"""
function delay()
  local now = now_ms()
  if next_slot == nil then next_slot = now end
  local slot = next_slot
  next_slot = slot + interval
  if slot <= now then return 0 end
  return slot - now
end
"""

PATHS = {
    "events": "/api/v1/events",
    "rules": "/api/v1/events",
    "credit": "/internal/credit",
    "ceiling": "/internal/bench/ceiling",
}


@dataclass
class Server:
    process: Started
    base_url: str


GUNICORN_CONF = ROOT / "config" / "gunicorn_conf.py"


def gunicorn_settings() -> dict:
    """The deployed web process's gunicorn settings (the file the image's command reads)."""
    return runpy.run_path(str(GUNICORN_CONF))


def gunicorn_options(*, port: int, workers: int) -> list[str]:
    """The deployed settings file, with the benchmark's own port, worker count and a listen backlog
    deep enough for the load generator's connections; everything else (timeout ...) as deployed."""
    return [
        "--config", str(GUNICORN_CONF),
        "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers),
        "--backlog", "2048",
    ]  # fmt: skip


def gunicorn_start(*, workers: int, name: str = "gunicorn") -> Server:
    port = free_port()
    argv = [str(BIN / "gunicorn"), *gunicorn_options(port=port, workers=workers), "config.wsgi:application"]
    process = start(name, argv, app_environment())
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{base_url}/health", process)
    except BaseException:
        process.stop()
        raise
    return Server(process=process, base_url=base_url)


def wrk_run(
    *,
    server: Server,
    mode: str,
    key: str,
    prefix: str,
    seconds: int,
    connections: int,
    rate: float = 0,
    types: int = 10,
    users: int = USERS,
    profile: Path | None = None,
) -> dict:
    """One wrk run (one thread); ``rate`` > 0 paces requests to that many per second, else full speed."""
    wrk = program("wrk", debian_package="wrk")
    script = _LUA % {
        "key": key,
        "mode": mode,
        "prefix": prefix,
        "source": SOURCE,
        "types": types,
        "users": users,
        "interval_ms": 1000.0 / rate if rate > 0 else 0.0,
        "delay": _DELAY if rate > 0 else "",
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
        script_path = Path(handle.name)
    try:
        argv = [
            wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
            "-s", str(script_path), server.base_url + PATHS[mode],
        ]  # fmt: skip
        web_workers = server.process.tree()[1:]
        profiler = profiler_start(web_workers[0], seconds, profile) if profile and web_workers else None
        cpu_before, host_before = server.process.cpu_seconds(), machine_cpu_seconds()
        postgres_before = processes_cpu_seconds("postgres")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        cpu_used, host_used = server.process.cpu_seconds() - cpu_before, machine_cpu_seconds() - host_before
        postgres_used = processes_cpu_seconds("postgres") - postgres_before
        if profiler is not None:
            profiler.wait(timeout=60)
    finally:
        script_path.unlink(missing_ok=True)
        server.process.sample_memory()
    line = next((row for row in done.stdout.splitlines() if row.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-500:]} {done.stdout[-500:]}")
    raw = json.loads(line[len("BENCH_JSON ") :])
    elapsed = raw["duration_us"] / 1e6
    errors = raw["not_created"] + raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"]
    result = {
        "requests": raw["requests"],
        "created": raw["created"],
        "seconds": round(elapsed, 2),
        "rps": round(raw["created"] / elapsed, 1),
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "max_ms": round(raw["max_us"] / 1000, 2),
        "errors": errors,
        "web_cpu_ms_per_request": round(1000 * cpu_used / raw["requests"], 2) if raw["requests"] else None,
        "host_cpu_ms_per_request": round(1000 * host_used / raw["requests"], 2) if raw["requests"] else None,
        "postgres_cpu_ms_per_request": round(1000 * postgres_used / raw["requests"], 2) if raw["requests"] else None,
        "last_bad_status": raw["last_bad_status"] or None,
        "connections": connections,
        "target_rate": rate or None,
    }
    log(f"wrk {mode} c={connections} rate={rate or 'max'}: {result}")
    return result
