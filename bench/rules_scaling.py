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

from .common import APP_DB, log, pg_admin
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


def rules_install(count: int) -> float:
    """Make rules 0..count-1 exist and be active; returns the seconds the import took."""
    from rules.services import rules_import

    began = time.perf_counter()
    rules_import(payload={"rules": [_rule(index) for index in range(count)]})
    return time.perf_counter() - began


def rules_scaling_measure(
    *, server: Server, key: str, counts: tuple[int, ...], seconds: int, connections: int
) -> dict[int, dict]:
    measured = {}
    for count in counts:
        import_seconds = rules_install(count)
        # The import writes rules, lines, versions and history; settle the tables (fresh planner
        # statistics, no autovacuum starting mid-run) so each configuration is measured alike.
        pg_admin("VACUUM ANALYZE", dbname=APP_DB)
        result = wrk_run(
            server=server,
            mode="rules",
            key=key,
            prefix=f"rules{count}-{int(time.time())}",
            seconds=seconds,
            connections=connections,
            types=POSTED_TYPES,
        )
        result["import_seconds"] = round(import_seconds, 2)
        result["rules_per_event"] = max(1, count // EVENT_TYPES) if count >= EVENT_TYPES else 1
        measured[count] = result
        log(f"rules x{count}: {result['rps']} events/s (import {import_seconds:.1f} s)")
    return measured
