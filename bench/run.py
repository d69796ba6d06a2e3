"""`make bench`: every figure below is measured in this one run, on this machine.

1. pgbench TPC-B-like at 1, 2, 4 clients (the database's own ceiling on this machine);
2. the ledger's service layer in 1, 2, 4 processes (credits distinct / hot user, hold + capture);
3. HTTP through gunicorn with production settings: events, credits, and a one-INSERT endpoint of the
   same stack (the framework's ceiling); p99 at half the maximum event rate;
4. end to end with two Celery worker processes: from the first POST to the last completed credit, and
   the broker messages (doorbells) per event; beside it one worker process draining a backlog of
   points actions;
5. events/s with 10, 100 and 1,000 active rules;
6. lots: reversals/s (4 processes), one expiry run over 100,000 due lots (lots/s), and over HTTP
   100-credit batches against single credit requests (credits/s of each);
7. peak RSS of the web and worker processes; SQL statements per request.

Scratch data lives in its own databases (bench_pgbench, bench_app) and Redis database 7 (BENCH_PGBENCH_DB,
BENCH_APP_DB, BENCH_REDIS_DB name others), all removed
at the end; every process started here is stopped here, also on failure.
Options: ``--quick`` (short runs, for development), ``--keep`` (keep bench_app for inspection).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .common import (
    APP_DB,
    RESULTS_DIR,
    BenchError,
    balanced_order,
    database_drop,
    django_setup,
    load_average,
    log,
    machine,
    pg_role_check,
    program,
    redis_flush,
    runs_combined,
    services_check,
)
from .http import gunicorn_settings

CONCURRENCY = (1, 2, 4)
RULE_COUNTS = (10, 100, 1000)
# The web process as deployed (config/gunicorn_conf.py); BENCH_WEB_WORKERS tries another count.
WEB_WORKERS = int(os.environ.get("BENCH_WEB_WORKERS") or gunicorn_settings()["workers"])
CELERY_WORKERS = 2
# Pending points actions one worker process drains beside the end-to-end run (quick, full).
BACKLOG_ACTIONS = (2000, 20000)
# Runs of each HTTP endpoint: more and shorter runs interleave them more finely against the machine's drift.
HTTP_ROUNDS = 4


def _durations(quick: bool) -> dict[str, int]:
    if quick:
        return {"pgbench": 5, "ledger": 3, "http": 3, "http_paced": 5, "e2e": 6, "rules": 3}
    # The paced run sets the p99: long enough that one disk stall (commits waiting while
    # the CPUs sit in iowait, seen here under load) holds well under 1 % of its requests.
    return {"pgbench": 15, "ledger": 8, "http": 6, "http_paced": 30, "e2e": 15, "rules": 6}


def _ratio(numerator, denominator) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 2)


def _targets(results: dict) -> list[dict]:
    """Each target as a ratio of two figures of this run; a target whose figures were not measured is left out."""
    pg, ledger, http, e2e, rules = (results.get(k) for k in ("pgbench", "ledger", "http", "e2e", "rules"))
    lots = results.get("lots")
    targets = []

    def add(name, value, goal, **extra):
        targets.append(
            {"target": name, "measured": value, "at_least": goal, "met": value is not None and value >= goal, **extra}
        )

    if ledger:
        distinct4 = ledger["credit_distinct"][4]["ops_per_s"]
        if pg:
            add("ledger credits, distinct users, 4 processes / pgbench 4 clients", _ratio(distinct4, pg[4]["tps"]), 0.5)
        add("ledger credits, hot user / distinct users (4 processes)",
            _ratio(ledger["credit_hot"][4]["ops_per_s"], distinct4), 0.5)  # fmt: skip
    if http:
        add(
            "HTTP events/s / one-INSERT endpoint requests/s",
            _ratio(http["events"]["rps"], http["ceiling"]["rps"]),
            0.6,
            per_round=_per_round(http["events"], http["ceiling"]),
            by_cost=_by_cost(http["events"], http["ceiling"]),
        )
        half = http["events_half_rate"]
        targets.append(
            {
                "target": f"HTTP events p99 at half the maximum rate ({half['target_rate']:.0f}/s), ms",
                "measured": half["p99_ms"],
                "under": 50,
                "met": half["p99_ms"] < 50 and half["errors"] == 0,
            }
        )
    if e2e and _e2e_versus(results):
        add(
            "end-to-end events/s / HTTP events/s (the runs before and after it)",
            _ratio(e2e["events_per_s"], _e2e_versus(results)),
            0.8,
            cores_allow=_e2e_bound(results),
            phase_ratio=_ratio(e2e["events_per_s"], http["events"]["rps"]) if http else None,
        )
    if e2e and e2e.get("messages_per_event") is not None:
        targets.append(
            {
                "target": "broker messages per event, end to end",
                "measured": e2e["messages_per_event"],
                "at_most": 1.0,
                "met": e2e["messages_per_event"] <= 1.0,
            }
        )
    if lots and "batch" in lots:
        add("HTTP credits/s in 100-operation batches / single credit requests", lots["batch"]["ratio"], 5)
    if rules:
        add(
            "events/s with 1,000 rules / with 10 rules",
            _ratio(rules[1000]["rps"], rules[10]["rps"]),
            0.8,
            per_round=_per_round(rules[1000], rules[10]),
            by_cost=_by_cost(rules[1000], rules[10]),
        )
    backtest = results.get("backtest")
    if backtest:
        per_100k = None if not backtest["events_per_s"] else 100_000 / backtest["events_per_s"]
        targets.append(
            {
                "target": "100,000 stored events backtested, s (from events/s; no difference with what was stored)",
                "measured": per_100k,
                "under": 60,
                "met": per_100k is not None and per_100k < 60 and backtest["events_differing"] == 0,
            }
        )
    return targets


def _per_round(numerator: dict, denominator: dict) -> list[float] | None:
    """The ratio within each round of the balanced order, where the two figures' runs ran side by side:
    how far the machine's drift moves the ratio from one round to the next."""
    top, bottom = numerator.get("rps_runs"), denominator.get("rps_runs")
    if not top or not bottom or len(top) != len(bottom):
        return None
    return [_ratio(a, b) for a, b in zip(top, bottom, strict=True)]


def _by_cost(numerator: dict, denominator: dict) -> float | None:
    """The same ratio from what one request costs the whole machine (the denominator's host ms over
    the numerator's). A disk stall idles the CPUs and costs a run requests, but not CPU time."""
    return _ratio(denominator.get("host_cpu_ms_per_request"), numerator.get("host_cpu_ms_per_request"))


def _e2e_versus(results: dict) -> float | None:
    """The HTTP events/s the end-to-end rate is compared with: the runs just before and after it (the
    same state of the database, the machine at the same speed), else the HTTP phase's."""
    beside = results["e2e"].get("events_beside")
    if beside:
        return beside["rps"]
    http = results.get("http")
    return http["events"]["rps"] if http else None


def _e2e_bound(results: dict) -> float | None:
    """The end-to-end ratio this machine's cores allow at most: the events/s all cores could carry at
    the CPU one event cost the whole machine end to end (web, PostgreSQL, Redis, wrk, Celery), over
    the HTTP events/s. One event then costs its POST and its actions' dispatch on the same cores."""
    host_ms = results["e2e"].get("host_cpu_ms_per_event")
    if not host_ms or not _e2e_versus(results):
        return None
    return _ratio(results["machine"]["cores"] * 1000 / host_ms, _e2e_versus(results))


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        value = f"{value:,.1f}" if value >= 10 else f"{value:.2f}"
    return f"{value}{unit}"


def table(results: dict) -> str:
    m = results["machine"]
    out = [
        f"Machine: {m['cores']} cores ({m['cpu_model'] or 'unknown CPU'}), {m['memory_gib']} GiB RAM, "
        f"PostgreSQL {m['postgresql']}, Python {m['python']}; {m['date']}",
        f"Load average (1/5/15 min): {m['load_average_at_start']} at start, {results['load_average_at_end']} at end",
        f"Web: gunicorn {WEB_WORKERS} sync workers; load: wrk, 1 thread; workers: Celery prefork x{CELERY_WORKERS}",
        f"HTTP: ceiling, events and credit run {HTTP_ROUNDS} times each, {results['durations_s']['http']} s a run, in a balanced order"
        " (ceiling, events, credit, credit, events, ceiling, ...)",
        "cpu ms: CPU time per operation of the measured process (ledger client, web worker, Celery per action)",
        "host ms: CPU time per operation of the whole machine (every process: web, PostgreSQL, Redis, wrk, Celery)",
        "",
        f"{'measurement':<52} {'conc':>4} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'err':>5} {'ratio':>6}"
        f" {'cpu ms':>7} {'host ms':>8}",
    ]

    def row(name, conc, rate, p50=None, p99=None, errors=None, ratio=None, cpu=None, host=None):
        out.append(
            f"{name:<52} {_fmt(conc):>4} {_fmt(rate):>9} {_fmt(p50):>8} {_fmt(p99):>8} {_fmt(errors):>5} {_fmt(ratio):>6}"
            f" {_fmt(cpu):>7} {_fmt(host):>8}"
        )

    pg = results.get("pgbench") or {}
    for count, item in pg.items():
        row("pgbench TPC-B-like (tps)", count, item["tps"], None, None)
    names = {
        "credit_distinct": "ledger credit, distinct users",
        "credit_hot": "ledger credit, one hot user",
        "hold_capture": "ledger hold + capture (pairs)",
    }
    for scenario, by_count in (results.get("ledger") or {}).items():
        for count, item in by_count.items():
            ratio = _ratio(item["ops_per_s"], pg[count]["tps"]) if count in pg else None
            row(f"{names[scenario]} (÷ pgbench)", count, item["ops_per_s"], item["p50_ms"], item["p99_ms"],
                item["errors"], ratio, item["client_cpu_ms_per_op"])  # fmt: skip
    http = results.get("http")
    if http:
        ceiling = http["ceiling"]["rps"]
        labels = {
            "ceiling": "HTTP one-INSERT endpoint (ceiling)",
            "credit": "HTTP POST /internal/credit (÷ ceiling)",
            "events": "HTTP POST /api/v1/events (÷ ceiling)",
            "events_half_rate": "HTTP events at half the max rate (paced)",
        }
        for name, label in labels.items():
            item = http[name]
            ratio = _ratio(item["rps"], ceiling) if name in ("credit", "events") else None
            row(label, item["connections"], item["rps"], item["p50_ms"], item["p99_ms"], item["errors"], ratio,
                item["web_cpu_ms_per_request"], item.get("host_cpu_ms_per_request"))  # fmt: skip
    e2e = results.get("e2e")
    if e2e:
        beside = e2e.get("events_beside")
        if beside:
            row("HTTP events before and after end to end", beside["connections"], beside["rps"], beside["p50_ms"],
                beside["p99_ms"], beside["errors"], None, beside["web_cpu_ms_per_request"],
                beside.get("host_cpu_ms_per_request"))  # fmt: skip
        row("end to end, events/s to last credit (÷ events beside)", e2e["workers"], e2e["events_per_s"], None,
            None, e2e["errors"], _ratio(e2e["events_per_s"], _e2e_versus(results)),
            e2e["worker_cpu_ms_per_action"], e2e.get("host_cpu_ms_per_event"))  # fmt: skip
    if e2e and e2e.get("messages_per_event") is not None:
        row("end to end, broker messages per event", e2e["workers"], e2e["messages_per_event"])
    backlog = results.get("dispatch_backlog")
    if backlog:
        row(f"dispatch, {backlog['actions']:,} points actions backlog (actions/s)", backlog["workers"],
            backlog["per_s"], None, None, None, None, backlog["worker_cpu_ms_per_action"],
            backlog["host_cpu_ms_per_action"])  # fmt: skip
    rules = results.get("rules")
    if rules:
        for count, item in rules.items():
            row(f"HTTP events, {count} active rules (÷ 10 rules)", item["connections"], item["rps"], item["p50_ms"],
                item["p99_ms"], item["errors"], _ratio(item["rps"], rules[RULE_COUNTS[0]]["rps"]),
                item["web_cpu_ms_per_request"], item.get("host_cpu_ms_per_request"))  # fmt: skip
    lots = results.get("lots") or {}
    if "reversals" in lots:
        rev = lots["reversals"]
        row("ledger reversals (1 point of a credit each)", 4, rev["reversals_per_s"], rev["p50_ms"], rev["p99_ms"],
            rev["errors"])  # fmt: skip
    if "expiry" in lots:
        row(f"expiry run over {lots['expiry']['lots']} due lots (lots/s)", 1, lots["expiry"]["lots_per_s"], None, None,
            lots["expiry"]["skipped"])  # fmt: skip
    if "lot_cost" in lots:
        cost = lots["lot_cost"]
        for variant, label in (("with_lot", "with its lot"), ("without_lot", "lot INSERT cut out")):
            row(f"ledger credit {label} (statements; cpu, host: client, PG ms)", 1, cost[variant]["statements"],
                None, None, None, None, cost[variant]["client_cpu_ms"], cost[variant]["pg_cpu_ms"])  # fmt: skip
        row("lot bookkeeping per credit (cpu, host: client, PG ms)", 1, None, None, None, None, None,
            cost["lot_client_cpu_ms"], cost["lot_pg_cpu_ms"])  # fmt: skip
    if "batch" in lots:
        batch = lots["batch"]
        row("HTTP single POST /internal/credit (credits/s)", 1, batch["single"]["credits_per_s"], None, None,
            batch["single"]["errors"])  # fmt: skip
        row(f"HTTP POST /internal/batch of {batch['batch_size']} (credits/s, ÷ single)", 1,
            batch["batch"]["credits_per_s"], None, None, batch["batch"]["errors"], batch["ratio"])  # fmt: skip
    out.append("")
    backtest = results.get("backtest")
    if backtest:
        out.append(
            f"Backtest: {backtest['events']} stored events in {_fmt(backtest['seconds'])} s "
            f"({_fmt(backtest['events_per_s'])} events/s), {backtest['events_differing']} differing from stored"
        )
        out.append("")
    mem = results.get("memory") or {}
    if "web" in mem:
        out.append(
            f"Peak RSS: web master {_fmt(mem['web']['parent_peak_mib'])} MiB, web worker "
            f"{_fmt(mem['web']['child_peak_mib'])} MiB (x{mem['web']['children']})"
        )
    if "worker" in mem:
        out.append(
            f"Peak RSS: Celery main {_fmt(mem['worker']['parent_peak_mib'])} MiB, worker process "
            f"{_fmt(mem['worker']['child_peak_mib'])} MiB (x{mem['worker']['children']})"
        )
    q = results.get("queries")
    if q:
        out.append(
            f"SQL statements: event POST {q['event_post']}, credit POST {q['credit_post']}, one-INSERT POST "
            f"{q['ceiling_post']}, dispatch of one event's {q['dispatch_actions']} points actions as one batch "
            f"{q['dispatch_batch']}"
        )
    if e2e:
        out.append(f"End to end: {e2e['events']} events, {e2e['completed']}/{e2e['actions']} actions completed, "
                   f"last credit {e2e['drain_after_load_s']} s after the load stopped")  # fmt: skip
    out.append("")
    out.append("Targets:")
    for target in results["targets"]:
        if "at_least" in target:
            bound = f">= {target['at_least']}"
        elif "at_most" in target:
            bound = f"<= {_fmt(target['at_most'])}"
        else:
            bound = f"< {target['under']}"
        line = f"  [{'met' if target['met'] else 'NOT met'}] {target['target']}: {_fmt(target['measured'])} ({bound})"
        if target.get("per_round"):
            line += "; per round " + ", ".join(_fmt(value) for value in target["per_round"])
        if target.get("by_cost") is not None:
            line += f"; by host ms per request {_fmt(target['by_cost'])}"
        if target.get("phase_ratio") is not None:
            line += f"; against the HTTP phase's events {_fmt(target['phase_ratio'])}"
        if target.get("cores_allow") is not None:
            line += (
                f"; the cores allow at most {_fmt(target['cores_allow'])} ({m['cores']} cores ÷ "
                f"{_fmt(results['e2e']['host_cpu_ms_per_event'])} host ms per event end to end)"
            )
        out.append(line)
    return "\n".join(out)


PHASES = ("pgbench", "ledger", "http", "e2e", "rules", "lots", "backtest")
BACKTEST_EVENTS = 100_000
# Due lots of the expiry run (quick, full).
EXPIRY_LOTS = (5_000, 100_000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, for development")
    parser.add_argument("--keep", action="store_true", help="keep the bench_app database afterwards")
    parser.add_argument(
        "--only", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)} (default: all)"
    )
    parser.add_argument("--output", default=str(RESULTS_DIR / "latest.json"), help="where the JSON goes")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also record py-spy flamegraphs of one web worker (events, credit) into bench-results/",
    )
    args = parser.parse_args(argv)
    phases = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = phases - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    durations = _durations(args.quick)
    began = time.monotonic()
    program("wrk", debian_package="wrk")
    services_check()
    pg_role_check(checkpoint="rules" in phases)
    results: dict = {"machine": machine(), "durations_s": durations, "quick": args.quick, "phases": sorted(phases)}
    log(f"machine: {results['machine']}")

    django_setup()
    from .app import app_prepare
    from .backtest import backtest_measure
    from .e2e import dispatch_backlog_measure, e2e_measure, events_beside_measure
    from .http import gunicorn_start, wrk_run
    from .ledger import SCENARIOS, ledger_measure
    from .lots import batch_measure, expiry_measure, lot_cost_measure, reversals_measure
    from .pgbench import pgbench_drop, pgbench_measure, pgbench_prepare
    from .queries import queries_measure
    from .rules_scaling import rules_scaling_measure

    server = None
    pgbench_ready = False
    results["memory"] = {}
    try:
        redis_flush()
        key = app_prepare()
        results["queries"] = {k: v for k, v in queries_measure(key=key).items() if k != "statements"}
        if "pgbench" in phases:
            pgbench_prepare()
            pgbench_ready = True
            results["pgbench"] = {}
        if "ledger" in phases:
            results["ledger"] = {scenario: {} for scenario in SCENARIOS}
        # The baseline runs right before the ledger at each concurrency: on a shared machine, the two
        # figures of each ratio are measured under the same background load.
        for count in CONCURRENCY if phases & {"pgbench", "ledger"} else ():
            if "pgbench" in phases:
                results["pgbench"][count] = pgbench_measure(clients=count, seconds=durations["pgbench"])
            for scenario in SCENARIOS if "ledger" in phases else ():
                results["ledger"][scenario][count] = ledger_measure(
                    scenario=scenario, processes=count, seconds=durations["ledger"]
                )
        if pgbench_ready:
            pgbench_drop()
            pgbench_ready = False
        if "lots" in phases:
            results["lots"] = {
                "reversals": reversals_measure(processes=4, seconds=durations["ledger"]),
                "expiry": expiry_measure(lots=EXPIRY_LOTS[0 if args.quick else 1]),
                "lot_cost": lot_cost_measure(credits=300 if args.quick else 1000),
            }
        if phases & {"http", "e2e", "rules", "lots"}:
            server = gunicorn_start(workers=WEB_WORKERS)
        if "lots" in phases:
            results["lots"]["batch"] = batch_measure(
                base_url=server.base_url, key=key, seconds=durations["http"], batch_size=100
            )
        connections = WEB_WORKERS * 2
        stamp = int(time.time())
        if "http" in phases:
            # The ceiling and the two endpoints HTTP_ROUNDS times each, in the balanced order ceiling,
            # events, credit, credit, events, ceiling, ceiling, ...: under a drift of the machine's
            # speed (tens of percent within minutes here) each one's runs sit at the same mean
            # position, so no endpoint is favoured by when it ran. Each figure is its runs over
            # their summed time.
            runs: dict[str, list[dict]] = {}
            for mode in balanced_order(("ceiling", "events", "credit"), HTTP_ROUNDS):
                first = mode not in runs
                flame = (
                    RESULTS_DIR / f"profile-web-{mode}.svg" if args.profile and first and mode != "ceiling" else None
                )
                runs.setdefault(mode, []).append(
                    wrk_run(
                        server=server, mode=mode, key=key, prefix=f"{mode}{stamp}-{len(runs.get(mode, []))}",
                        seconds=durations["http"], connections=connections, profile=flame,
                    )
                )  # fmt: skip
            http = {mode: runs_combined(mode_runs) for mode, mode_runs in runs.items()}
            http["events_half_rate"] = wrk_run(
                server=server, mode="events", key=key, prefix=f"half{stamp}", seconds=durations["http_paced"],
                connections=connections, rate=max(1.0, http["events"]["rps"] / 2),
            )  # fmt: skip
            results["http"] = http
        if "e2e" in phases:
            around = {"server": server, "key": key, "seconds": durations["http"], "connections": connections}
            results["dispatch_backlog"] = dispatch_backlog_measure(actions=BACKLOG_ACTIONS[0 if args.quick else 1])
            # Before and after it, the same events with no worker, so a drift of the machine's speed
            # weighs on both sides of the ratio alike.
            beside = [events_beside_measure(**around)]
            results["e2e"], results["memory"]["worker"] = e2e_measure(
                server=server, key=key, seconds=durations["e2e"], connections=connections, workers=CELERY_WORKERS
            )
            beside.append(events_beside_measure(**around))
            results["e2e"]["events_beside"] = runs_combined(beside)
            redis_flush()
        if "rules" in phases:
            results["rules"] = rules_scaling_measure(
                server=server, key=key, counts=RULE_COUNTS, seconds=durations["rules"], connections=connections
            )
        if "backtest" in phases:
            results["backtest"] = backtest_measure(events=BACKTEST_EVENTS // (10 if args.quick else 1))
        if server is not None:
            results["memory"]["web"] = server.process.memory_summary()
    finally:
        if server is not None:
            server.process.stop()
        if pgbench_ready:
            pgbench_drop()
        from django.db import connections as db_connections

        db_connections.close_all()
        redis_flush()
        if not args.keep:
            database_drop(APP_DB)

    results["load_average_at_end"] = load_average()
    results["targets"] = _targets(results)
    results["elapsed_s"] = round(time.monotonic() - began, 1)
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print()
    print(table(results))
    print(f"\nTook {results['elapsed_s']} s; JSON in {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
