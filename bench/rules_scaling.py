"""Events/s as the number of active rules grows: 10, 100 and 1,000 rules over 50 event types.

Rule ``i`` belongs to event type ``bench.tNN`` with ``NN = i % 50`` and rank ``i // 50``. Rank 0
matches every event posted (two reward lines, like the demo's quest rule); higher ranks have a
condition the events never meet, so they cost evaluation but make no action. Events go to the ten
types that have rules in every configuration, so each configuration creates the same actions and
only the number of rules an event has to consider changes (1, 2 and 20 per event).
Rules are written through the import service (validation, versions, history), as an admin would.
"""

from __future__ import annotations

import time

from .common import APP_DB, balanced_order, database_settle, log, runs_combined
from .http import Server, wrk_run

EVENT_TYPES = 50
POSTED_TYPES = 10


def _rule(index: int) -> dict:
    event_type, rank = index % EVENT_TYPES, index // EVENT_TYPES
    if rank == 0:
        condition = "context.points > 0"
        rewards = [
            {"target": "actor", "reward_type": "points", "amount": "context.points"},
            {"target": "primary_subject", "reward_type": "points", "amount": "floor(context.points / 2)"},
        ]
    else:
        condition = f"context.level == {rank}"
        rewards = [{"target": "actor", "reward_type": "points", "amount": "context.points"}]
    return {
        "code": f"bench_scale_{event_type:02d}_{rank:02d}",
        "name": f"Scaling rule {index}",
        "event_type": f"bench.t{event_type:02d}",
        "condition": condition,
        "priority": 100 + rank,
        "is_active": True,
        "stop_processing": False,
        "valid_from": None,
        "valid_until": None,
        "rewards": [{**line, "params": {}, "lock_condition": "", "max_per_target": None} for line in rewards],
    }


def rules_activate(count: int, *, total: int) -> float:
    """Make rules 0..total-1 exist with exactly the first ``count`` active; returns the import's seconds.

    Only rules whose state changes are written (a new version each, with history), as an admin
    toggling rules would; the first call creates them all.
    """
    from rules.models import Rule
    from rules.services import rules_import

    wanted = {_rule(index)["code"]: index < count for index in range(total)}
    current = dict(Rule.objects.filter(code__in=list(wanted)).values_list("code", "is_active"))
    changed = [
        {**_rule(index), "is_active": active}
        for index, (code, active) in enumerate(wanted.items())
        if current.get(code) != active
    ]
    began = time.perf_counter()
    if changed:
        rules_import(payload={"rules": changed})
    return time.perf_counter() - began


def rules_scaling_measure(
    *, server: Server, key: str, counts: tuple[int, ...], seconds: int, connections: int, rounds: int = 4
) -> dict[int, dict]:
    """Events/s per rule count, each count measured ``rounds`` times in a balanced order (``balanced_order``)."""
    from django.conf import settings

    total = max(counts)
    runs: dict[int, list[dict]] = {count: [] for count in counts}
    imports: dict[int, list[float]] = {count: [] for count in counts}
    active = None
    for step, count in enumerate(balanced_order(counts, rounds)):
        if count != active:
            imports[count].append(rules_activate(count, total=total))
            active = count
        # Every run starts alike, whether or not the rules changed: the tables settled (fresh planner
        # statistics, no autovacuum starting mid-run), the writes that settling made flushed, and
        # the web workers' rule caches expired, so the run sees exactly this configuration.
        database_settle(APP_DB)
        time.sleep(settings.RULES_CACHE_SECONDS + 0.5)
        result = wrk_run(
            server=server,
            mode="rules",
            key=key,
            prefix=f"rules{count}-{step}-{int(time.time())}",
            seconds=seconds,
            connections=connections,
            types=POSTED_TYPES,
        )
        runs[count].append(result)
        log(f"rules x{count} (run {len(runs[count])} of {rounds}): {result['rps']} events/s")
    measured = {}
    for count in counts:
        measured[count] = runs_combined(runs[count])
        measured[count]["import_seconds"] = [round(value, 2) for value in imports[count]]
        measured[count]["rules_per_event"] = max(1, count // EVENT_TYPES)
    return measured
