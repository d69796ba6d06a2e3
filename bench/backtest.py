"""Backtest rate: stored events replayed per second by ``connect.backtest`` (SPEC §15: 100,000 < 60 s).

The events are the demo workflows' types (quest completions with the badge rule's cap, voucher
purchases, bookings over a referral tree, reviews, upgrades), stored directly with the actions the
demo rules make for them, received one millisecond apart in a period of their own; the backtest of
the current rules over that period is timed, and must find no difference with what was stored.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

from .common import log

SOURCE = "bench_backtest"
BATCH = 5000
SPONSORS = 200


def _context(n: int) -> tuple[str, str, str | None, dict]:
    """(event_type, actor, subject, context) of the n-th event, cycling through the workflows."""
    kind = n % 10
    user = f"bt-{n % 5000}"
    if kind in (0, 1, 2, 3):
        return "quest.completed", user, f"bt-author-{n % 50}", {"base_reward_points": 10 + n % 40,
                                                                 "total_quests_completed": n % 15}  # fmt: skip
    if kind in (4, 5):
        return "rielt.booking_paid", user, None, {"amount": 10000 + n % 5000, "host_user_id": f"bt-host-{n % 30}"}
    if kind == 6:
        return "voucher.premium_purchased", user, None, {"amount": 1000, "rf_partner_id": "bt-partner",
                                                          "pro_promoter_id": f"bt-promoter-{n % 20}"}  # fmt: skip
    if kind == 7:
        return "rf_partner.review_created", user, None, {"pro_curator_id": "bt-curator"}
    if kind == 8:
        return "referral.joined", user, f"bt-sponsor-{n % SPONSORS}", {"level": 1}
    return "referral.subjoined", user, f"bt-sponsor-{n % SPONSORS}", {"level": 2}


def backtest_events_store(*, count: int, start: datetime) -> datetime:
    """Store ``count`` events from ``start`` (1 ms apart) with the actions the active rules make for
    them, planned by the engine over in-memory state as ingestion would have; returns the end.

    The rows go in with one COPY per table and batch, so that preparing 100,000 events costs little
    beside the backtest it prepares."""
    from connect.backtest import _Profiles
    from connect.backtest_counters import Counters
    from connect.models import EconomicEvent, RewardAction
    from rules import engine
    from rules.selectors import rules_for_event_type

    profiles, counters = _Profiles(), Counters()
    rules_by_type: dict = {}
    events, actions = [], []
    for n in range(count):
        event_type, actor, subject, context = _context(n)
        received = start + timedelta(milliseconds=n)
        profiles.apply(event_type, actor, subject, context)
        if event_type not in rules_by_type:
            rules_by_type[event_type] = rules_for_event_type(event_type)
        plan = engine.plan(
            event=engine.EventInput(event_type, actor, subject, context, None, received),
            rules=rules_by_type[event_type], profile=profiles.profile, upline=profiles.upline,
            granted_count=counters.granted_count, period_count=counters.period_count,
            budget_used=counters.budget_used,
        )  # fmt: skip
        counters.record(plan.actions)
        event_id = uuid.uuid4()
        status = EconomicEvent.Status.PROCESSED if plan.actions else EconomicEvent.Status.IGNORED
        events.append({
            "id": event_id, "source_service": SOURCE, "external_id": f"bt-{start.timestamp():.0f}-{n}",
            "event_type": event_type, "actor_user_id": actor, "primary_subject_user_id": subject,
            "context": context, "received_at": received, "payload_hash": "0" * 64, "status": status,
        })  # fmt: skip
        actions += [
            {
                "id": uuid.uuid4(), "event_id": event_id, "rule_id": a.rule_id, "rule_code": a.rule_code,
                "rule_version": a.rule_version, "reward_line_id": a.line_id, "target_user_id": a.target_user_id,
                "reward_type": a.reward_type, "amount": a.amount, "params": a.params,
                "status": RewardAction.Status.COMPLETED, "budget_period_key": a.budget_key,
                "cap_period_key": a.cap_period_key, "created_at": received, "updated_at": received,
            }
            for a in plan.actions
        ]  # fmt: skip
        if len(events) >= BATCH:
            _copy(EconomicEvent, events)
            _copy(RewardAction, actions)
            events, actions = [], []
    _copy(EconomicEvent, events)
    _copy(RewardAction, actions)
    return start + timedelta(milliseconds=count)


def _copy(model, rows: list[dict]) -> None:
    """Write ``rows`` (column attribute -> value) with one COPY. A field a row lacks gets its default,
    computed once for all the rows: every row gives its own primary key and timestamps."""
    from django.db import connection, models

    if not rows:
        return
    fields = model._meta.concrete_fields
    defaults = {field.attname: field.get_default() for field in fields}
    dumps = {field.attname: json.dumps for field in fields if isinstance(field, models.JSONField)}
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in fields)
    names = [field.attname for field in fields]
    with (
        connection.cursor() as cursor,
        cursor.copy(f"COPY {quote(model._meta.db_table)} ({columns}) FROM STDIN") as copy,
    ):
        for row in rows:
            values = []
            for name in names:
                value = row[name] if name in row else defaults[name]
                values.append(dumps[name](value) if name in dumps and value is not None else value)
            copy.write_row(values)


def backtest_measure(*, events: int) -> dict:
    """Store ``events`` events in a period of their own, then time the backtest of the current rules."""
    from connect.backtest import backtest_run
    from rules.services import rules_export

    start = datetime(2001, 1, 1, tzinfo=UTC) + timedelta(seconds=int(time.time()) % 10**6)
    log(f"backtest: storing {events} events with their actions")
    until = backtest_events_store(count=events, start=start)
    log("backtest: replaying them against the current rules")
    began = time.monotonic()
    report = backtest_run(payload=rules_export(), since=start, until=until)
    seconds = time.monotonic() - began
    result = {
        "events": report["events"],
        "seconds": round(seconds, 2),
        "events_per_s": round(report["events"] / seconds, 1) if seconds > 0 else None,
        "events_differing": report["events_differing"],
        "actions": report["actions"]["backtest"],
    }
    log(f"backtest: {result}")
    return result
