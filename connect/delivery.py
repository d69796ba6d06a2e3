"""The delivery state machine of RewardActions (SPEC §8): claim a batch, deliver it, record each outcome.

The action row is the source of truth:
- a run claims up to ``DISPATCH_BATCH_SIZE`` due ``pending`` actions (``pending`` → ``dispatched``,
  attempts + 1) in a short transaction with ``SELECT … FOR UPDATE SKIP LOCKED`` and commits, so two
  runs never claim the same action;
- it delivers them grouped by channel, outside any row lock (the ledger posts a batch in one
  transaction, an HTTP channel sends its requests concurrently);
- it records every outcome in one UPDATE guarded on (``dispatched``, the attempt it claimed), so a
  run that was given up on and re-queued cannot overwrite a later one;
- a transient error puts the action back to ``pending`` with ``next_attempt_at`` (exponential
  backoff with jitter); after ``DISPATCH_MAX_ATTEMPTS`` tries it is ``failed``;
- every channel is idempotent on the action id, so a re-run never pays twice;
- a *reversal action* (``reverses`` = the action it takes back, SPEC §12) goes the same way, once its
  original's own delivery has ended: original ``completed`` → the channel's ``reverse_many``; original
  still ``pending``/``dispatched`` → it waits (back to ``pending``, no attempt used); original
  ``failed``/``cancelled`` (nothing was paid) → the original is reduced in place and the reversal
  action cancelled, in the transaction of the guarded outcome update;
- ``reward_action.completed`` / ``reward_action.failed`` webhooks are written in that same transaction,
  for the rows it actually changed.
"""

from __future__ import annotations

import logging
import math
import random
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from config.api.jsonbody import storable_text
from config.db import update_rows_where
from config.metrics import DISPATCH_SECONDS

from .channels import (
    CHANNELS,
    ChannelError,
    ChannelNotConfigured,
    PermanentChannelError,
    TransientChannelError,
)
from .models import EconomicEvent, RewardAction
from .reversals import CANCELLED_BY_REVERSAL
from .webhooks.emitters import reward_actions_outcome_notify

logger = logging.getLogger("connect.dispatch")

Status = RewardAction.Status

# A delayed doorbell may reach a worker a little before the moment stored on the row (clocks of two
# hosts). Small, as every drain claims whatever is due: a retry must not come much sooner than its backoff.
EARLY_RUN_TOLERANCE = timedelta(seconds=0.5)
MAX_ERROR_CHARS = 2000
RECORDED_FIELDS = (
    "status", "attempts", "result", "last_error", "next_attempt_at", "completed_at", "updated_at", "shortfall",
    "cancel_reason",
)  # fmt: skip
# The event's columns a claim loads with each action (the points channel's metadata), in the model's
# field order: ``Model.from_db`` takes a subset of the fields' values in that order, whatever order
# the names are given in.
CLAIM_EVENT_COLUMNS = tuple(
    field.attname
    for field in EconomicEvent._meta.concrete_fields
    if field.attname in {"id", "event_type", "source_service", "external_id"}
)
# Originals whose delivery has not ended yet: their reversal actions wait.
IN_DELIVERY = (Status.LOCKED, Status.PENDING, Status.DISPATCHED)
# Originals nothing was delivered for: their reversal actions reduce them in place instead.
NOTHING_DELIVERED = (Status.FAILED, Status.CANCELLED)


class ReversalWaits:
    """A reversal action's outcome while its original is still being delivered: try again in ``seconds``."""

    def __init__(self, seconds: float):
        self.seconds = seconds


class ReversalOfNothing:
    """A reversal action's outcome when its original was ``status`` (nothing delivered): reduce it instead."""

    def __init__(self, status: str):
        self.status = status


@dataclass(frozen=True)
class DispatchOutcome:
    """What a run did with one action; ``status`` is None when there was nothing for it to do, or its
    outcome was dropped because the row had moved on."""

    action_id: uuid.UUID | None = None
    status: str | None = None
    retry_in: float | None = None
    error: str = ""
    waiting: bool = False  # a reversal action back to pending until its original's delivery ends

    @property
    def ran(self) -> bool:
        return self.status is not None


SKIPPED = DispatchOutcome()


@dataclass(frozen=True)
class DrainResult:
    delivered: int  # actions this drain claimed and delivered (whatever the outcome)
    retry_in: tuple[float, ...]  # when the retries it scheduled fall due: one delayed doorbell each
    more: bool  # stopped at its time budget with due actions perhaps left


def backoff_with_jitter(attempt: int) -> float:
    """Seconds to wait after the ``attempt``-th failed try (1-based) before the next one.

    Exponential (``DISPATCH_RETRY_BASE_SECONDS`` doubling per try, capped at
    ``DISPATCH_RETRY_MAX_SECONDS``) with equal jitter: half of the step is fixed, half is random, so
    retries spread out without ever coming back sooner than half the step.
    """
    base = max(0.0, float(settings.DISPATCH_RETRY_BASE_SECONDS))
    cap = max(0.0, float(settings.DISPATCH_RETRY_MAX_SECONDS))
    step = min(cap, base * 2.0 ** min(max(attempt, 1) - 1, 60))
    return step / 2 + random.uniform(0, step / 2)


def reward_actions_drain(*, first_ids=(), seconds: float | None = None) -> DrainResult:
    """Dispatch batches of due actions (``first_ids`` first) until one comes back short of a full
    batch or ``seconds`` have passed. Must not be called inside a transaction."""
    deadline = time.monotonic() + (seconds if seconds is not None else float(settings.DISPATCH_DRAIN_SECONDS))
    limit = max(1, int(settings.DISPATCH_BATCH_SIZE))
    delivered, retries = 0, []
    while True:
        outcomes = reward_actions_dispatch(first_ids=first_ids, limit=limit)
        first_ids = ()
        delivered += len(outcomes)
        retries += [outcome.retry_in for outcome in outcomes if outcome.retry_in is not None]
        if len(outcomes) < limit or time.monotonic() >= deadline:
            return DrainResult(delivered, _retry_times(retries), more=len(outcomes) == limit)


def _retry_times(delays: list[float]) -> tuple[float, ...]:
    """The retry delays rounded up to a grid of eight steps per doubling, so a batch's retries share a
    few doorbells: each one drains every action due by then."""
    times = set()
    for delay in delays:
        grid = 2.0 ** math.floor(math.log2(max(delay, 0.4))) / 8
        times.add(math.ceil(delay / grid) * grid)
    return tuple(sorted(times))


def reward_action_dispatch(*, action_id) -> DispatchOutcome:
    """Deliver this one action if it is ``pending`` and due; a no-op for any other state or a row
    another run holds. Must not be called inside a transaction."""
    try:
        action_id = uuid.UUID(str(action_id))
    except ValueError:
        logger.warning("dispatch of a malformed reward action id ignored", extra={"action_id": str(action_id)})
        return SKIPPED
    outcomes = reward_actions_dispatch(first_ids=[action_id], limit=1, others=False)
    return outcomes[0] if outcomes else SKIPPED


def reward_actions_dispatch(*, first_ids=(), limit: int, others: bool = True) -> list[DispatchOutcome]:
    """Claim up to ``limit`` due ``pending`` actions — ``first_ids`` first, then (with ``others``) any
    other due ones, the longest due first — deliver them and record their outcomes, one per action."""
    actions = _claim(first_ids=list(first_ids), limit=limit, others=others)
    if not actions:
        return []
    results: dict = _reversals_held(actions)
    seconds: dict = defaultdict(float)
    by_channel: dict[tuple[str, bool], list[RewardAction]] = defaultdict(list)
    for action in actions:
        if action.pk not in results:
            by_channel[(action.reward_type, action.reverses_id is not None)].append(action)
    for (reward_type, reversal), group in by_channel.items():
        started = time.perf_counter()
        results.update(_deliver(reward_type, group, reversal=reversal))
        seconds[reward_type] += time.perf_counter() - started
    outcomes = _record(actions, results)
    for action, outcome in zip(actions, outcomes, strict=True):
        _attempt_log(action, outcome, seconds[action.reward_type])
    return outcomes


def _claim(*, first_ids: list, limit: int, others: bool) -> list[RewardAction]:
    """Mark up to ``limit`` due actions ``dispatched`` (attempts + 1) and return them, the ringing
    event's first; committed when it returns, so two runs never claim the same action."""
    if not first_ids and not others:
        return []
    if connection.vendor != "postgresql":
        return _claim_stepwise(first_ids=first_ids, limit=limit, others=others)
    return _claim_in_one_statement(first_ids=first_ids, limit=limit, others=others)


def _claim_in_one_statement(*, first_ids: list, limit: int, others: bool) -> list[RewardAction]:
    """PostgreSQL: ``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED LIMIT n) RETURNING``, in its own
    transaction, joined to the few event columns the channels read."""
    now = timezone.now()
    table = RewardAction._meta.db_table
    events = EconomicEvent._meta.db_table
    if first_ids:
        # The ringing event's actions first: a sort, but only a doorbell rung at once carries ids.
        which = "AND (id = ANY(%(first)s) OR %(others)s)"
        order = "(id = ANY(%(first)s)) DESC, next_attempt_at"
        returned_order = "(claimed.id = ANY(%(first)s)) DESC, claimed.due_at"
    else:
        which, order = "", "next_attempt_at"  # the due index's order: no sort, however long the backlog
        returned_order = "claimed.due_at"
    sql = f"""
        WITH claimed AS (
            UPDATE {table} AS action
               SET status = %(dispatched)s, attempts = action.attempts + 1, next_attempt_at = NULL,
                   updated_at = %(now)s
              FROM (SELECT id, next_attempt_at FROM {table}
                     WHERE status = %(pending)s AND (next_attempt_at IS NULL OR next_attempt_at <= %(due)s) {which}
                     ORDER BY {order} LIMIT %(limit)s FOR UPDATE SKIP LOCKED) AS due
             WHERE action.id = due.id
            RETURNING action.*, due.next_attempt_at AS due_at)
        SELECT claimed.*, {", ".join(f"event.{column} AS event_{column}" for column in CLAIM_EVENT_COLUMNS)}
          FROM claimed JOIN {events} AS event ON event.id = claimed.event_id
         ORDER BY {returned_order}
    """
    params = {
        "dispatched": Status.DISPATCHED, "pending": Status.PENDING, "now": now, "due": now + EARLY_RUN_TOLERANCE,
        "first": list(first_ids), "others": others, "limit": limit,
    }  # fmt: skip
    with transaction.atomic(), connection.cursor() as cursor:
        # Rows that left ``pending`` keep their entries in the due indexes until VACUUM. A bitmap scan
        # reads all of them and their heap pages on every claim (the planner picks one whenever its
        # statistics think few rows are pending, as they do for a queue); an index scan marks the dead
        # entries it passes, so the next claims skip them.
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        actions = list(RewardAction.objects.raw(sql, params))
    for action in actions:
        # What the points channel's metadata reads of the event; the rest of the event is not loaded.
        action.event = EconomicEvent.from_db(
            DEFAULT_DB_ALIAS,
            CLAIM_EVENT_COLUMNS,
            [getattr(action, f"event_{column}") for column in CLAIM_EVENT_COLUMNS],
        )
    return actions


@transaction.atomic
def _claim_stepwise(*, first_ids: list, limit: int, others: bool) -> list[RewardAction]:
    """SQLite (the embedded default, whose writers take turns): the same claim in a few statements."""
    now = timezone.now()
    due = (
        RewardAction.objects.select_related("event")
        .filter(status=Status.PENDING)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now + EARLY_RUN_TOLERANCE))
    )
    actions = list(due.filter(pk__in=first_ids).order_by("next_attempt_at")[:limit]) if first_ids else []
    if others and len(actions) < limit:
        claimed = [action.pk for action in actions]
        actions += list(due.exclude(pk__in=claimed).order_by("next_attempt_at")[: limit - len(actions)])
    RewardAction.objects.filter(pk__in=[action.pk for action in actions]).update(
        status=Status.DISPATCHED, attempts=F("attempts") + 1, next_attempt_at=None, updated_at=now
    )
    for action in actions:
        action.status, action.attempts, action.next_attempt_at, action.updated_at = (
            Status.DISPATCHED, action.attempts + 1, None, now
        )  # fmt: skip
    return actions


def _reversals_held(actions: list[RewardAction]) -> dict:
    """The outcomes of the claimed reversal actions whose original is not ``completed``: ReversalWaits
    or ReversalOfNothing by action id. Loads each reversal action's original onto it (``reverses``)."""
    ids = {action.reverses_id for action in actions if action.reverses_id is not None}
    if not ids:
        return {}
    originals = RewardAction.objects.in_bulk(ids)
    now = timezone.now()
    held = {}
    for action in actions:
        if action.reverses_id is None:
            continue
        original = action.reverses = originals[action.reverses_id]
        if original.status in IN_DELIVERY:
            held[action.pk] = ReversalWaits(_wait_seconds(original, now))
        elif original.status in NOTHING_DELIVERED:
            held[action.pk] = ReversalOfNothing(original.status)
    return held


def _wait_seconds(original: RewardAction, now) -> float:
    """How long a reversal action waits before it looks at its original again: the retry step, or
    until the original's own next try is due."""
    seconds = max(1.0, float(settings.DISPATCH_RETRY_BASE_SECONDS))
    if original.status == Status.PENDING and original.next_attempt_at is not None:
        seconds = max(seconds, (original.next_attempt_at - now).total_seconds() + seconds)
    return min(seconds, max(1.0, float(settings.DISPATCH_RETRY_MAX_SECONDS)))


def _deliver(reward_type: str, actions: list[RewardAction], *, reversal: bool = False) -> dict:
    """For each action id, the channel's result or the ChannelError that kept it from being delivered
    (``reversal``: the actions are reversal actions of completed originals, taken back by the channel)."""
    channel = CHANNELS.get(reward_type)
    if channel is None:
        error = PermanentChannelError(f"No channel delivers reward type '{reward_type}'.")
        return {action.pk: error for action in actions}
    problem = channel.configuration_error()
    if problem:
        return {action.pk: ChannelNotConfigured(problem) for action in actions}
    try:
        results = channel.reverse_many(actions) if reversal else channel.deliver_many(actions)
    except Exception as exc:
        # A bug or an outage nobody classified: retried like a transient error and, when the
        # attempts run out, visible to staff as failed, rather than stuck in ``dispatched``.
        logger.exception("reward channel raised", extra={"channel": reward_type, "actions": len(actions)})
        error = TransientChannelError(f"Unexpected error: {exc.__class__.__name__}: {exc}")
        return {action.pk: error for action in actions}
    return results


def _record(actions: list[RewardAction], results: dict) -> list[DispatchOutcome]:
    """Store every outcome in one UPDATE, each row guarded on (``dispatched``, the attempt this run
    claimed); an outcome whose row moved on is dropped and logged. Should the batch's UPDATE fail
    (an outcome the database refuses, such as a result it cannot store), each outcome is stored on
    its own, and one that still cannot be is logged and its action recorded as failed instead."""
    now = timezone.now()
    outcomes = [_apply(action, results.get(action.pk), now) for action in actions]
    try:
        stored = _store(actions)
    except (DatabaseError, TypeError, ValueError):
        stored = set()
        for index, action in enumerate(actions):
            try:
                stored |= _store([action])
            except (DatabaseError, TypeError, ValueError) as exc:
                logger.warning(
                    "reward action outcome could not be stored; recorded as failed",
                    exc_info=True,
                    extra={"action_id": str(action.pk), "attempt": action.claimed_attempt},
                )
                message = f"The outcome could not be stored: {exc.__class__.__name__}: {exc}"[:MAX_ERROR_CHARS]
                action.status, action.result, action.last_error = Status.FAILED, {}, message
                action.next_attempt_at = action.completed_at = None
                outcomes[index] = DispatchOutcome(action_id=action.pk, status=Status.FAILED, error=message)
                stored |= _store([action])
    for index, action in enumerate(actions):
        if action.pk not in stored:
            logger.warning(
                "reward action moved on before its outcome was recorded; outcome dropped",
                extra={"action_id": str(action.pk), "attempt": action.claimed_attempt, "outcome": action.status},
            )
            outcomes[index] = DispatchOutcome(action_id=action.pk)
    return outcomes


def _store(actions: list[RewardAction]) -> set:
    """UPDATE the rows still ``dispatched`` at the attempt this run claimed; the ids it changed.
    In the same transaction: the originals of reversal actions cancelled for want of anything to take
    back are reduced, and the webhooks of the rows that became ``completed`` or ``failed`` are written.
    Atomic on its own, so a refused UPDATE leaves a caller's transaction usable."""
    with transaction.atomic():
        originals = _originals_lock(actions)
        stored = update_rows_where(
            actions,
            RECORDED_FIELDS,
            where={"status": lambda action: Status.DISPATCHED, "attempts": lambda action: action.claimed_attempt},
        )
        for action in actions:
            if action.pk in stored and action.pk in originals:
                _original_reduce(originals[action.pk], action)
        reward_actions_outcome_notify(actions=[action for action in actions if action.pk in stored])
        return stored


def _originals_lock(actions: list[RewardAction]) -> dict:
    """Lock the originals of the reversal actions about to be cancelled (in id order); an original that
    is no longer ``failed``/``cancelled`` (staff retried it) turns its reversal action's outcome into a wait.
    The originals by reversal action id."""
    cancelling = [a for a in actions if a.reverses_id is not None and a.status == Status.CANCELLED]
    if not cancelling:
        return {}
    ids = sorted({action.reverses_id for action in cancelling})
    locked = {o.pk: o for o in RewardAction.objects.select_for_update().filter(pk__in=ids).order_by("pk")}
    originals = {}
    for action in cancelling:
        original = locked[action.reverses_id]
        if original.status in NOTHING_DELIVERED:
            originals[action.pk] = original
        else:
            _apply(action, ReversalWaits(_wait_seconds(original, timezone.now())), action.updated_at)
    return originals


def _original_reduce(original: RewardAction, reversal: RewardAction) -> None:
    """Take the reversal's amount off an original nothing was delivered for (cancelled when 0 is left)."""
    original.amount -= min(reversal.amount, original.amount)
    original.updated_at = reversal.updated_at
    fields = ["amount", "updated_at"]
    if original.amount == 0 and original.status != Status.CANCELLED:
        original.status, original.next_attempt_at = Status.CANCELLED, None
        original.cancel_reason = f"{CANCELLED_BY_REVERSAL}{reversal.event_id}"
        fields += ["status", "next_attempt_at", "cancel_reason"]
    original.save(update_fields=fields)


def _apply(action: RewardAction, result, now) -> DispatchOutcome:
    """Set the outcome of this attempt on the instance (not yet stored) and say what it was."""
    if not hasattr(action, "claimed_attempt"):
        action.claimed_attempt = action.attempts
    attempt = action.claimed_attempt
    action.updated_at = now
    if isinstance(result, dict):
        action.status, action.result, action.completed_at = Status.COMPLETED, result, now
        action.last_error, action.next_attempt_at = "", None
        if action.reverses_id is not None and "shortfall" in result:
            action.shortfall = result["shortfall"]
        return DispatchOutcome(action_id=action.pk, status=Status.COMPLETED)
    if isinstance(result, ReversalWaits):
        # Not a try: the original is still being delivered. The attempt is given back.
        action.status, action.attempts, action.last_error = Status.PENDING, attempt - 1, ""
        action.next_attempt_at = now + timedelta(seconds=result.seconds)
        return DispatchOutcome(action_id=action.pk, status=Status.PENDING, retry_in=result.seconds, waiting=True)
    if isinstance(result, ReversalOfNothing):
        action.status, action.attempts, action.last_error, action.next_attempt_at = (
            Status.CANCELLED, attempt - 1, "", None
        )  # fmt: skip
        action.cancel_reason = (
            f"nothing to take back: the original action {action.reverses_id} was {result.status} "
            f"(never delivered), so it was reduced by {action.amount} instead"
        )
        return DispatchOutcome(action_id=action.pk, status=Status.CANCELLED)
    if not isinstance(result, ChannelError):
        result = TransientChannelError(f"The channel gave no outcome for this action: {result!r}"[:MAX_ERROR_CHARS])
    message = storable_text(result.message[:MAX_ERROR_CHARS])  # it may quote another service's answer
    if isinstance(result, ChannelNotConfigured):
        # Not a try: nothing was sent. The attempt is given back; the sweeper comes back later.
        action.status, action.attempts, action.last_error = Status.PENDING, attempt - 1, message
        action.next_attempt_at = now + timedelta(seconds=float(settings.SWEEPER_INTERVAL_SECONDS))
        return DispatchOutcome(action_id=action.pk, status=Status.PENDING, error=message)
    if isinstance(result, TransientChannelError) and attempt < settings.DISPATCH_MAX_ATTEMPTS:
        delay = backoff_with_jitter(attempt)
        if result.retry_after:
            # The receiver's Retry-After is honoured, but never beyond the configured cap.
            delay = max(delay, min(result.retry_after, float(settings.DISPATCH_RETRY_MAX_SECONDS)))
        action.status, action.last_error = Status.PENDING, message
        action.next_attempt_at = now + timedelta(seconds=delay)
        return DispatchOutcome(action_id=action.pk, status=Status.PENDING, retry_in=delay, error=message)
    if isinstance(result, TransientChannelError):
        message = f"{message} (gave up after {attempt} attempts)"[:MAX_ERROR_CHARS]
    action.status, action.last_error, action.next_attempt_at = Status.FAILED, message, None
    return DispatchOutcome(action_id=action.pk, status=Status.FAILED, error=message)


def _attempt_outcome(outcome: DispatchOutcome) -> str:
    """The attempt's outcome as logged and measured: completed, failed, retry, not_configured, superseded,
    or for a reversal action waiting_for_original or reversal_of_nothing."""
    if outcome.status == Status.COMPLETED:
        return "completed"
    if outcome.status == Status.FAILED:
        return "failed"
    if outcome.status == Status.CANCELLED:
        return "reversal_of_nothing"
    if outcome.waiting:
        return "waiting_for_original"
    if outcome.status == Status.PENDING:
        return "retry" if outcome.retry_in is not None else "not_configured"
    return "superseded"  # the row moved on (re-queued and claimed again); this outcome was dropped


def _attempt_log(action: RewardAction, outcome: DispatchOutcome, seconds: float) -> None:
    """One line and one histogram sample per attempt (``seconds``: its channel's batch). The error text
    stays on the row (last_error): it may quote the receiving service's answer, which is not logged."""
    label = _attempt_outcome(outcome)
    DISPATCH_SECONDS.labels(action.reward_type, label).observe(seconds)
    if outcome.status == Status.FAILED:
        logger.warning(
            "reward action failed; see its last_error",
            extra={"action_id": str(action.pk), "event_id": str(action.event_id), "channel": action.reward_type},
        )
    logger.info(
        "dispatch attempt",
        extra={
            "action_id": str(action.pk),
            "event_id": str(action.event_id),
            "channel": action.reward_type,
            "outcome": label,
            "attempt": action.claimed_attempt,
            "duration_ms": round(seconds * 1000, 2),
            "retry_in": round(outcome.retry_in, 3) if outcome.retry_in is not None else None,
        },
    )
