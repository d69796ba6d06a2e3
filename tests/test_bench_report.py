"""The benchmark's report: targets as ratios of figures of one run, and the printed table
(bench/run.py). The measuring phases need the services and minutes; `make bench` runs them."""

import time

from bench.common import balanced_order, machine_cpu_seconds, percentile, runs_combined
from bench.run import _targets, table


def _http(rps: float, cpu: float = 5.0, **extra) -> dict:
    return {"rps": rps, "p50_ms": 10.0, "p99_ms": 20.0, "errors": 0, "web_cpu_ms_per_request": cpu,
            "host_cpu_ms_per_request": 1.2, "connections": 4, **extra}  # fmt: skip


def _ledger(rate: float) -> dict:
    return {"ops_per_s": float(rate), "p50_ms": 2.0, "p99_ms": 5.0, "errors": 0, "client_cpu_ms_per_op": 0.6}


def _results(*, events_rps=300.0, ceiling_rps=400.0, e2e_rate=250.0, half_p99=30.0, half_errors=0) -> dict:
    return {
        "machine": {
            "cores": 2,
            "cpu_model": "CPU",
            "memory_gib": 8,
            "postgresql": "15",
            "python": "3.11",
            "date": "2026-01-01 00:00:00 UTC",
            "load_average_at_start": "0.1 0.1 0.1",
        },  # fmt: skip
        "load_average_at_end": "1.0 1.0 1.0",
        "durations_s": {"http": 6},
        "pgbench": {1: {"tps": 500.0}, 2: {"tps": 900.0}, 4: {"tps": 2000.0}},
        "ledger": {
            "credit_distinct": {1: _ledger(500), 2: _ledger(900), 4: _ledger(1100)},
            "credit_hot": {1: _ledger(450), 2: _ledger(800), 4: _ledger(500)},
            "hold_capture": {1: _ledger(80), 2: _ledger(150), 4: _ledger(180)},
        },
        "http": {
            "ceiling": _http(ceiling_rps, rps_runs=[ceiling_rps * 1.1, ceiling_rps * 0.9]),
            "events": _http(events_rps, rps_runs=[events_rps, events_rps], host_cpu_ms_per_request=2.0),
            "credit": _http(350.0),
            "events_half_rate": _http(events_rps / 2, p99_ms=half_p99, errors=half_errors, target_rate=events_rps / 2),
        },
        "e2e": {
            "events_per_s": e2e_rate,
            "errors": 0,
            "workers": 2,
            "worker_cpu_ms_per_action": 3.0,
            "events": 10,
            "completed": 20,
            "actions": 20,
            "drain_after_load_s": 1.0,
            "host_cpu_ms_per_event": 5.0,
            "messages": 4,
            "messages_per_event": 0.4,
        },  # fmt: skip
        "dispatch_backlog": {
            "actions": 20000,
            "workers": 1,
            "seconds": 16.0,
            "per_s": 1250.0,
            "worker_cpu_ms_per_action": 0.6,
            "host_cpu_ms_per_action": 0.9,
        },
        "rules": {
            10: _http(200.0, rps_runs=[200.0, 200.0]),
            100: _http(190.0),
            1000: _http(150.0, rps_runs=[160.0, 140.0], host_cpu_ms_per_request=1.5),
        },
    }


def _by_name(targets: list[dict]) -> dict[str, dict]:
    """Each target by its name up to the first parenthesis (the p99 target names its rate there)."""
    return {t["target"].split(" (")[0]: t for t in targets}


def test_each_target_is_a_ratio_of_two_figures_of_the_same_run():
    targets = _by_name(_targets(_results()))

    distinct = targets["ledger credits, distinct users, 4 processes / pgbench 4 clients"]
    assert (distinct["measured"], distinct["met"]) == (0.55, True)  # 1100 / 2000 pgbench tps at 4
    hot = targets["ledger credits, hot user / distinct users"]
    assert (hot["measured"], hot["met"]) == (0.45, False)  # 500 / 1100
    assert targets["HTTP events/s / one-INSERT endpoint requests/s"]["measured"] == 0.75
    assert targets["end-to-end events/s / HTTP events/s"]["measured"] == 0.83
    rules = targets["events/s with 1,000 rules / with 10 rules"]
    assert (rules["measured"], rules["met"]) == (0.75, False)  # 150 / 200
    assert [t["met"] for t in _targets(_results())].count(False) == 2  # hot user 0.45, 1,000 rules 0.75


def test_noisy_ratios_come_with_each_rounds_ratio_and_end_to_end_with_what_the_cores_allow():
    targets = _by_name(_targets(_results(events_rps=300.0, ceiling_rps=400.0)))

    # Round by round: 300 / 440 and 300 / 360; 160 / 200 and 140 / 200.
    assert targets["HTTP events/s / one-INSERT endpoint requests/s"]["per_round"] == [0.68, 0.83]
    assert targets["events/s with 1,000 rules / with 10 rules"]["per_round"] == [0.8, 0.7]
    # 2 cores at 5 ms of the whole machine's CPU per event carry at most 400 events/s: 400 / 300.
    assert targets["end-to-end events/s / HTTP events/s"]["cores_allow"] == 1.33
    # Four doorbells for ten events.
    assert targets["broker messages per event, end to end"] == {
        "target": "broker messages per event, end to end", "measured": 0.4, "at_most": 1.0, "met": True,
    }  # fmt: skip
    # By what a request costs the whole machine: 1.2 host ms for the ceiling, 2.0 for an event; 1.2 with
    # 10 rules, 1.5 with 1,000.
    assert targets["HTTP events/s / one-INSERT endpoint requests/s"]["by_cost"] == 0.6
    assert targets["events/s with 1,000 rules / with 10 rules"]["by_cost"] == 0.8


def test_without_runs_or_host_cpu_the_extra_figures_are_left_out():
    results = _results()
    del results["http"]["events"]["rps_runs"], results["e2e"]["host_cpu_ms_per_event"], results["dispatch_backlog"]
    del results["e2e"]["messages_per_event"]
    del results["http"]["ceiling"]["host_cpu_ms_per_request"]  # a JSON file from before the column
    results["rules"][10]["rps_runs"] = [200.0]  # a different number of rounds: no pairs
    results["rules"][1000]["host_cpu_ms_per_request"] = None

    targets = _by_name(_targets(results))

    assert targets["HTTP events/s / one-INSERT endpoint requests/s"]["per_round"] is None
    assert targets["events/s with 1,000 rules / with 10 rules"]["per_round"] is None
    assert targets["end-to-end events/s / HTTP events/s"]["cores_allow"] is None
    assert "broker messages per event, end to end" not in targets
    assert targets["HTTP events/s / one-INSERT endpoint requests/s"]["by_cost"] is None
    assert targets["events/s with 1,000 rules / with 10 rules"]["by_cost"] is None
    results["targets"] = _targets(results)
    printed = table(results)
    assert "by host ms" not in printed and "backlog" not in printed and "messages per event" not in printed


def test_a_target_below_its_bound_is_not_met_and_p99_counts_errors():
    targets = _targets(_results(events_rps=200.0, e2e_rate=100.0, half_errors=3))
    by_name = _by_name(targets)

    assert by_name["HTTP events/s / one-INSERT endpoint requests/s"] == {
        "target": "HTTP events/s / one-INSERT endpoint requests/s", "measured": 0.5, "at_least": 0.6, "met": False,
        "per_round": [0.45, 0.56], "by_cost": 0.6,
    }  # fmt: skip
    assert by_name["end-to-end events/s / HTTP events/s"]["met"] is False
    p99 = by_name["HTTP events p99 at half the maximum rate"]
    assert p99["measured"] == 30.0 and p99["met"] is False  # under 50 ms, but with errors


def test_end_to_end_is_compared_with_the_events_runs_before_and_after_it_when_there_are_some():
    results = _results(events_rps=300.0, e2e_rate=250.0)
    # The machine slowed down after the HTTP phase: the runs beside end to end made 260 events/s.
    results["e2e"]["events_beside"] = _http(260.0, host_cpu_ms_per_request=2.0)

    target = _by_name(_targets(results))["end-to-end events/s / HTTP events/s"]

    assert (target["measured"], target["met"]) == (0.96, True)  # 250 / 260
    assert target["phase_ratio"] == 0.83  # 250 / 300, the HTTP phase's rate
    assert target["cores_allow"] == 1.54  # 400 events/s the cores carry / 260
    results["targets"] = _targets(results)
    printed = table(results)
    assert "HTTP events before and after end to end                 4     260.0" in printed
    assert "end to end, events/s to last credit (÷ events beside)    2     250.0" in printed
    assert "0.96" in printed.split("end to end, events/s to last credit")[1].splitlines()[0]
    results.pop("http")  # end to end alone (``--only e2e``) still has its ratio
    assert _by_name(_targets(results))["end-to-end events/s / HTTP events/s"]["phase_ratio"] is None


def test_targets_of_phases_not_run_are_left_out():
    results = _results()
    for phase in ("e2e", "rules", "pgbench"):
        results.pop(phase)

    names = [t["target"] for t in _targets(results)]

    assert not any("end-to-end" in name or "1,000 rules" in name or "pgbench" in name for name in names)
    assert any(name.startswith("ledger credits, hot user") for name in names)


def test_the_table_states_the_machine_and_every_measured_row():
    results = _results()
    results["targets"] = _targets(results)

    printed = table(results)

    assert printed.startswith("Machine: 2 cores (CPU), 8 GiB RAM")
    assert "HTTP: ceiling, events and credit run 4 times each, 6 s a run, in a balanced order" in printed
    assert "pgbench TPC-B-like (tps)                                4   2,000.0" in printed
    assert "ledger credit, distinct users (÷ pgbench)               4   1,100.0" in printed
    assert "HTTP POST /api/v1/events (÷ ceiling)" in printed and "0.75" in printed
    assert "[NOT met] events/s with 1,000 rules / with 10 rules: 0.75 (>= 0.8)" in printed
    assert "[met] HTTP events p99 at half the maximum rate (150/s), ms: 30.0 (< 50)" in printed
    assert "host ms: CPU time per operation of the whole machine" in printed
    assert (
        "HTTP one-INSERT endpoint (ceiling)                      4     400.0     10.0     20.0     0      -    5.00     1.20"
        in printed
    )
    assert "(>= 0.6); per round 0.68, 0.83; by host ms per request 0.60" in printed
    assert "(>= 0.8); per round 0.80, 0.70; by host ms per request 0.80" in printed
    assert (
        "end-to-end events/s / HTTP events/s (the runs before and after it): 0.83 (>= 0.8); against the HTTP "
        "phase's events 0.83; the cores allow at most 1.33 (2 cores ÷ 5.00 host ms per event end to end)"
    ) in printed
    assert "[met] broker messages per event, end to end: 0.40 (<= 1.00)" in printed
    assert "end to end, broker messages per event                   2      0.40" in printed
    assert (
        "dispatch, 20,000 points actions backlog (actions/s)     1   1,250.0        -        -     -      -    0.60     0.90"
        in printed
    )


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99  # the smallest value with 99 % of the values at or below it
    assert percentile(values, 99.5) == 100
    assert percentile(list(range(1, 11)), 25) == 3
    assert percentile(values, 7) == 7  # no float error: 7 / 100 * 100 is 7.000000000000001
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def _run(rps: float, seconds: float, *, p50=10.0, p99=20.0, cpu=5.0, host=8.0, errors=0) -> dict:
    requests = round(rps * seconds)
    return {"requests": requests, "created": requests, "seconds": seconds, "rps": rps, "p50_ms": p50,
            "p99_ms": p99, "max_ms": p99 * 2, "errors": errors, "web_cpu_ms_per_request": cpu,
            "host_cpu_ms_per_request": host, "connections": 4}  # fmt: skip


def test_rule_counts_run_in_a_balanced_order():
    assert balanced_order((10, 100, 1000), 2) == [10, 100, 1000, 1000, 100, 10]
    assert balanced_order((10, 100, 1000), 3) == [10, 100, 1000, 1000, 100, 10, 10, 100, 1000]
    # Under a steady drift each configuration's runs sit at the same mean position.
    order = balanced_order((10, 100, 1000), 2)
    mean_position = {count: sum(i for i, c in enumerate(order) if c == count) / 2 for count in (10, 100, 1000)}
    assert len(set(mean_position.values())) == 1


def test_a_configurations_runs_combine_into_one_rate_over_the_summed_time():
    combined = runs_combined(
        [_run(300.0, 10.0, cpu=4.0, host=6.0, p99=25.0), _run(200.0, 5.0, cpu=7.0, host=9.0, p99=40.0, errors=1)]
    )
    assert combined["requests"] == 4000
    assert combined["rps"] == round(4000 / 15, 1)  # not the mean of the two rates (250)
    assert combined["p99_ms"] == 40.0  # the worst run's
    assert combined["errors"] == 1
    assert combined["web_cpu_ms_per_request"] == round((3000 * 4.0 + 1000 * 7.0) / 4000, 2)
    assert combined["host_cpu_ms_per_request"] == round((3000 * 6.0 + 1000 * 9.0) / 4000, 2)
    assert combined["rps_runs"] == [300.0, 200.0]


def test_the_machines_busy_cpu_time_counts_what_a_process_spends():
    before, own_before = machine_cpu_seconds(), time.process_time()
    while time.process_time() - own_before < 0.3:
        sum(range(1000))
    # The whole machine's busy time includes this process's 0.3 s (one clock tick of slack).
    assert machine_cpu_seconds() - before >= 0.3 - 0.02


def test_cpu_of_processes_by_command_counts_the_live_ones_and_those_that_exited():
    import subprocess
    import sys
    from pathlib import Path

    from bench.common import processes_cpu_seconds

    command = Path("/proc/self/comm").read_text().strip()  # this process's, as /proc names it
    before, own_before = processes_cpu_seconds(command), time.process_time()
    while time.process_time() - own_before < 0.3:
        sum(range(1000))
    assert processes_cpu_seconds(command) - before >= 0.3 - 0.02
    # A child that burns CPU and exits: its time goes to this process's account of reaped children.
    child = "import time\nstart = time.process_time()\nwhile time.process_time() - start < 0.3: pass"
    before = processes_cpu_seconds(Path(sys.executable).name[:15])
    subprocess.run([sys.executable, "-c", child], check=True)
    assert processes_cpu_seconds(Path(sys.executable).name[:15]) - before >= 0.3 - 0.02


def test_doorbells_are_counted_from_the_workers_log():
    from bench.e2e import doorbells_received

    log_text = "\n".join(
        [
            '{"message": "Task connect.tasks.drain_reward_actions[0a1b] received"}',
            '{"message": "Task connect.tasks.drain_reward_actions[0a1b] succeeded in 0.2s: 3"}',
            '{"message": "Task connect.tasks.sweep_reward_actions[77ff] received"}',
            '{"message": "Task connect.tasks.drain_reward_actions[9c9c] received"}',
        ]
    )
    assert doorbells_received(log_text) == 2
