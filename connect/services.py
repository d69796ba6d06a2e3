"""Connect writes: ingest an event — store it, project profiles, run the rules, store the actions."""

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import F
from django.utils import timezone

from config.api.errors import IdempotencyConflict
from config.db import insert_rows, insert_unless_conflict, insert_with_dependents_unless_conflict, update_columns
from config.metrics import EVENTS_INGESTED
from rules import engine
from rules.budgets import CounterLocks
from rules.selectors import rules_cache_clear, rules_for_event_type

from .doorbell import doorbell_ring_on_commit
from .models import EconomicEvent, RewardAction, RewardGrant
from .profiles import ProfileReader, profile_apply
from .reversals import event_reversal_apply, reversal_original_lock
from .serializers import event_out_data
from .trace import trace_document
from .webhooks.models import Kind as WebhookKind
from .webhooks.services import webhook_deliveries_enqueue

logger = logging.getLogger("connect.ingest")

PAYLOAD_FIELDS = ("event_type", "actor_user_id", "primary_subject_user_id", "context", "occurred_at")
REVERSAL_FIELDS = ("reverses_external_id", "reversal_fraction")


@dataclass(frozen=True)
class IngestResult:
    event: EconomicEvent
    replayed: bool
    # The actions this call created, as stored; None for a replay (read them from the database).
    actions: list[RewardAction] | None = None


def payload_hash(data: dict, *, default_fraction_written: bool = False) -> str:
    """The fingerprint a replay is told by. A ``reversal_fraction`` of 1 is the default (SPEC §5), so
    it is left out as if it had not been sent; ``default_fraction_written`` gives the fingerprint it
    had when an explicit 1 was kept in it, as events stored before were."""

    def normal(value):
        return value.isoformat() if isinstance(value, datetime) else value

    canonical = {field: normal(data.get(field)) for field in PAYLOAD_FIELDS}
    # Only a reversal carries these: the fingerprints of every other event stay as they were stored.
    for field in REVERSAL_FIELDS:
        value = data.get(field)
        if value is None:
            continue
        if field == "reversal_fraction" and not default_fraction_written and Decimal(value) == 1:
            continue
        canonical[field] = str(value)
    encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()


def _event_new(*, source_service: str, data: dict, reverses: EconomicEvent | None = None) -> EconomicEvent:
    """The event as it will be stored: ``processed``, what an event with actions ends as."""
    return EconomicEvent(
        reverses=reverses,
        reverses_external_id=data.get("reverses_external_id"),
        reversal_fraction=data.get("reversal_fraction") if reverses is not None else None,
        source_service=source_service,
        external_id=data["external_id"],
        event_type=data["event_type"],
        actor_user_id=data["actor_user_id"],
        primary_subject_user_id=data.get("primary_subject_user_id"),
        context=data.get("context") or {},
        occurred_at=data.get("occurred_at"),
        payload_hash=payload_hash(data),
        status=EconomicEvent.Status.PROCESSED,
    )


def _event_insert_or_get(
    *, source_service: str, data: dict, reverses: EconomicEvent | None = None
) -> tuple[EconomicEvent, bool]:
    """Claim ``(source_service, external_id)`` with one INSERT ... ON CONFLICT DO NOTHING.

    The event is stored ``processed``; the other outcomes correct it before the transaction
    commits, so no one ever sees the provisional value.
    """
    event = _event_new(source_service=source_service, data=data, reverses=reverses)
    if insert_unless_conflict(event, ("source_service", "external_id")):
        return event, True
    fraction = data.get("reversal_fraction")
    written = payload_hash(data, default_fraction_written=True) if fraction is not None and fraction == 1 else None
    return _event_stored(event, also=written), False


def _event_stored(event: EconomicEvent, *, also: str | None = None) -> EconomicEvent:
    """The stored event whose (source_service, external_id) ``event`` repeats, if the payload is the
    same (its fingerprint is ``event``'s, or ``also``: the one the same payload was stored with before)."""
    existing = EconomicEvent.objects.filter(source_service=event.source_service, external_id=event.external_id).first()
    if existing is None:
        raise RuntimeError(f"event ({event.source_service}, {event.external_id}) conflicted but is not stored")
    if existing.payload_hash not in (event.payload_hash, also):
        raise IdempotencyConflict(
            "This external_id was already used with a different payload.",
            details={"external_id": event.external_id},
        )
    return existing


def _status_set(event: EconomicEvent, status: str, error: str = "") -> None:
    """Replace the provisional ``processed`` the claim stored, and store the event's trace."""
    event.status, event.error = status, error
    update_columns(event, ["status", "error", "trace"])


class _GrantCounter:
    """max_per_target under concurrency: the (line, target) counter row is locked until commit,
    so two simultaneous events cannot both grant a once-only reward."""

    def __init__(self):
        self._locked: dict[tuple[int, str], int] = {}

    def __call__(self, line_id: int, target_user_id: str) -> int:
        key = (line_id, target_user_id)
        if key not in self._locked:
            RewardGrant.objects.get_or_create(reward_line_id=line_id, target_user_id=target_user_id)
            grant = RewardGrant.objects.select_for_update().get(reward_line_id=line_id, target_user_id=target_user_id)
            self._locked[key] = grant.count
        return self._locked[key]

    def record(self, actions) -> None:
        for action in actions:
            if action.max_per_target:
                RewardGrant.objects.filter(reward_line_id=action.line_id, target_user_id=action.target_user_id).update(
                    count=F("count") + 1
                )


def event_ingest(*, client_name: str, data: dict) -> IngestResult:
    """Store the event and everything it causes, all or nothing; dispatch is enqueued on commit.

    ``data`` is validated input (SPEC §5 fields). Same (source, external_id) and payload → the
    stored event (replayed); a different payload → IdempotencyConflict.

    The path is chosen before anything is written. Most events (no profile to project, and a plan
    made without locks that holds no once-only reward and no lock condition) are written in one
    statement that in autocommit mode is its own transaction; the others, and any call inside a
    caller's transaction, take the transactional path, which plans again under its locks. Both
    store the same rows.
    """
    try:
        return _ingest_once(client_name=client_name, data=data)
    except (IntegrityError, OperationalError) as exc:
        # Only this call's own transaction can be tried again: in a caller's, the error belongs
        # to the caller (and a foreign key is checked at its commit).
        # Two cases leave nothing written and succeed on a second try:
        # - a deadlock: two ingests each held a lock the other wanted (row locks, or two upgrades
        #   whose rules reward each other's user under a lock condition); PostgreSQL aborted this
        #   one and the other has gone on;
        # - a foreign-key refusal: another process deleted a rule or reward line this one still
        #   had cached (RULES_CACHE_SECONDS; an edit clears only the editing process's cache), so
        #   plan again with the rules as they are.
        deadlock, stale_rules = _sqlstate(exc) == _DEADLOCK, _is_foreign_key_violation(exc)
        if connection.in_atomic_block or not (deadlock or stale_rules):
            raise
        if stale_rules:
            rules_cache_clear()
    return _ingest_once(client_name=client_name, data=data)


def _ingest_once(*, client_name: str, data: dict) -> IngestResult:
    rules = rules_for_event_type(data["event_type"])
    # A reversal takes row locks on the original event and its actions: always the transactional path.
    if data.get("reverses_external_id") is None and _one_statement_possible(data["event_type"]):
        event = _event_new(source_service=client_name, data=data)
        reader = ProfileReader()
        planned = _plan_without_locks(event, rules, reader)
        if not _needs_transaction(planned):
            return _ingest_in_one_statement(event=event, rules=rules, planned=planned)
    return _ingest_in_transaction(client_name=client_name, data=data, rules=rules)


_DEADLOCK = "40P01"


def _sqlstate(exc: Exception) -> str | None:
    return getattr(exc.__cause__, "sqlstate", None)


def _is_foreign_key_violation(exc: Exception) -> bool:
    return _sqlstate(exc) == "23503" or "FOREIGN KEY constraint failed" in str(exc)


def _one_statement_possible(event_type: str) -> bool:
    """Whether the event may be written in one statement: it projects no profile, and the statement
    can be its own transaction. Its plan decides the rest (``_needs_transaction``)."""
    profile_types = (
        settings.PROFILE_SPONSOR_EVENT_TYPES,
        settings.PROFILE_VIP_EVENT_TYPES,
        settings.PROFILE_PRO_EVENT_TYPES,
    )
    return (
        connection.vendor == "postgresql"
        and connection.get_autocommit()  # the statement must be its own transaction
        and not connection.in_atomic_block
        and not any(event_type in types for types in profile_types)
    )


def _plan_without_locks(
    event: EconomicEvent, rules, reader: ProfileReader
) -> engine.Plan | engine.RuleEvaluationFailed:
    """The plan as it is when no once-only reward was granted yet and profiles are read unlocked; or
    the evaluation failure, which fails the event whatever the locks."""
    try:
        return _plan(event, rules, reader, granted_count=_none_granted, lock_profile=reader.profile, counters=None)
    except engine.RuleEvaluationFailed as failure:
        return failure


def _none_granted(line_id: int, target_user_id: str) -> int:
    return 0


def _needs_transaction(planned) -> bool:
    """True when the event must take the transactional path after all: its rules could not be
    evaluated (a failed event writes its ``event.failed`` webhook deliveries in its transaction), or
    the plan has an action that must hold a lock until the commit: one of a once-only line (its
    grant counter row), of a budgeted rule or a periodically capped line (their counter rows,
    ``rules.budgets``) or of a line with a lock condition (the target's upgrade lock,
    ``profiles.upgrade_lock``). Such an event is planned again on that path; planned without
    counters, the plan holds every action the counters could allow."""
    if isinstance(planned, engine.RuleEvaluationFailed):
        return True
    return any(
        action.max_per_target is not None or action.lock_condition or action.budget_key or action.cap_period_key
        for action in planned.actions
    )


def _ingest_in_one_statement(*, event: EconomicEvent, rules, planned: engine.Plan) -> IngestResult:
    """Write the event and the actions of its plan (made beforehand, holding no lock) in one
    statement; the claim of its key decides. Nothing is written before it, so a replay leaves no
    trace. Profiles were read outside a transaction, as each statement of the transactional path
    reads them (READ COMMITTED)."""
    event.trace = trace_document(rules=planned.trace)
    actions = _actions_from(event, planned)
    if not actions:
        event.status = EconomicEvent.Status.IGNORED
    if not insert_with_dependents_unless_conflict(event, ("source_service", "external_id"), actions):
        return IngestResult(event=_event_stored(event), replayed=True)
    doorbell_ring_on_commit([str(a.pk) for a in actions if a.status == RewardAction.Status.PENDING])
    _record(event, len(actions), has_rules=bool(rules))
    return IngestResult(event=event, replayed=False, actions=actions)


@transaction.atomic
def _ingest_in_transaction(*, client_name: str, data: dict, rules) -> IngestResult:
    original = None
    if data.get("reverses_external_id") is not None:
        # Before the claim: an unknown original refuses the whole request (nothing stored, the
        # external_id not used up).
        original = reversal_original_lock(source_service=client_name, external_id=data["reverses_external_id"])
    event, created = _event_insert_or_get(source_service=client_name, data=data, reverses=original)
    if not created:
        return IngestResult(event=event, replayed=True)

    profile_changes: list[dict] = []
    to_dispatch = profile_apply(event=event, changes=profile_changes)
    reversal_savepoint = transaction.savepoint() if original is not None else None
    reversal_actions = []
    if original is not None:
        outcome = event_reversal_apply(
            event=event, original=original, fraction=data.get("reversal_fraction") or Decimal(1)
        )
        reversal_actions = outcome.reversal_actions
    reader = ProfileReader()
    grants = _GrantCounter()
    counters = CounterLocks()
    try:
        plan = _plan(event, rules, reader, granted_count=grants, lock_profile=reader.lock_profile, counters=counters)
        if reversal_savepoint is not None:
            transaction.savepoint_commit(reversal_savepoint)
    except engine.RuleEvaluationFailed as failure:
        if reversal_savepoint is not None:
            # A failed event has no actions (SPEC §5): the refund is not applied either.
            transaction.savepoint_rollback(reversal_savepoint)
        event.trace = trace_document(rules=failure.trace, profile_changes=profile_changes, released_actions=to_dispatch)
        _status_set(event, EconomicEvent.Status.FAILED, _failure_message(failure))
        webhook_deliveries_enqueue(kind=WebhookKind.EVENT_FAILED, payload=event_out_data(event, []))
        doorbell_ring_on_commit(to_dispatch)
        _record(event, 0, has_rules=True)
        return IngestResult(event=event, replayed=False, actions=[])

    actions = _actions_from(event, plan)
    insert_rows(actions)
    grants.record(plan.actions)
    counters.record(plan.actions)
    event.trace = trace_document(rules=plan.trace, profile_changes=profile_changes, released_actions=to_dispatch)
    actions = reversal_actions + actions
    _status_set(event, EconomicEvent.Status.PROCESSED if actions else EconomicEvent.Status.IGNORED)
    to_dispatch += [str(a.pk) for a in actions if a.status == RewardAction.Status.PENDING]
    doorbell_ring_on_commit(to_dispatch)
    _record(event, len(actions), has_rules=bool(rules))
    return IngestResult(event=event, replayed=False, actions=actions)


def _plan(
    event: EconomicEvent, rules, reader: ProfileReader, *, granted_count, lock_profile, counters: CounterLocks | None
) -> engine.Plan:
    return engine.plan(
        event=engine.EventInput(
            event_type=event.event_type,
            actor_user_id=event.actor_user_id,
            primary_subject_user_id=event.primary_subject_user_id,
            context=event.context,
            occurred_at=event.occurred_at,
            received_at=event.received_at,
        ),
        rules=rules,
        profile=reader.profile,
        upline=reader.upline,
        granted_count=granted_count,
        lock_profile=lock_profile,
        period_count=counters.period_count if counters else None,
        budget_used=counters.budget_used if counters else None,
    )


def _failure_message(failure: engine.RuleEvaluationFailed) -> str:
    return f"Rule '{failure.rule_code}' could not be evaluated: {failure.message}"


def _actions_from(event: EconomicEvent, plan: engine.Plan) -> list[RewardAction]:
    now = timezone.now()
    return [
        RewardAction(
            event=event,
            rule_id=planned.rule_id,
            rule_code=planned.rule_code,
            rule_version=planned.rule_version,
            reward_line_id=planned.line_id,
            target_user_id=planned.target_user_id,
            reward_type=planned.reward_type,
            amount=planned.amount,
            params=planned.params,
            status=RewardAction.Status.LOCKED if planned.locked else RewardAction.Status.PENDING,
            locked_until_condition=planned.lock_condition if planned.locked else "",
            next_attempt_at=None if planned.locked else now,
            budget_period_key=planned.budget_key,
            cap_period_key=planned.cap_period_key,
            created_at=now,
            updated_at=now,
        )
        for planned in plan.actions
    ]


def _record(event: EconomicEvent, action_count: int, *, has_rules: bool) -> None:
    # Callers choose event types freely; types without rules share one label to bound cardinality.
    EVENTS_INGESTED.labels(event.event_type if has_rules else "unmatched", event.status).inc()
    logger.info(
        "event ingested",
        extra={
            "event_id": str(event.pk),
            "event_type": event.event_type,
            "source_service": event.source_service,
            "status": event.status,
            "actions": action_count,
        },
    )
