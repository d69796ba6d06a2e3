"""Dispatch of RewardActions (SPEC §8): claim, deliver through the channel, record the outcome.

The action row is the source of truth and the broker only a doorbell:
- a run claims the row (``pending`` → ``dispatched``, attempts + 1) in a short transaction with
  ``SELECT … FOR UPDATE SKIP LOCKED``, commits, calls the channel outside any row lock, then records
  the outcome with an UPDATE guarded on (``dispatched``, its own attempt number) — so duplicate or
  parallel runs do nothing, and a run that was given up on and re-queued cannot overwrite a later one;
- transient errors put the action back to ``pending`` with ``next_attempt_at`` (exponential backoff with
  jitter) and schedule one delayed run; after ``DISPATCH_MAX_ATTEMPTS`` tries it is ``failed``;
- the sweeper re-enqueues ``pending``/``dispatched`` actions that are due and that nobody touched for
  ``SWEEPER_STALE_SECONDS`` (a lost message, a killed worker, a flushed broker);
- every channel is idempotent on the action id, so a re-run never pays twice.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from kombu import serialization as kombu_serialization
from kombu.entity import maybe_delivery_mode
from kombu.utils import json as kombu_json

from config.api.errors import DomainError, NotFound
from config.db import model_from_row, prepared_cursor, returning_columns, update_where
from config.metrics import DISPATCH_SECONDS

from .channels import (
    ChannelError,
    ChannelNotConfigured,
    PermanentChannelError,
    TransientChannelError,
    channel_for,
    channels_all,
)
from .models import EconomicEvent, RewardAction

logger = logging.getLogger("connect.dispatch")

Status = RewardAction.Status

# A delayed run may reach a worker a little before the moment stored on the row (clock skew).
EARLY_RUN_TOLERANCE = timedelta(seconds=2)
SWEEP_LIMIT = 500
MAX_ERROR_CHARS = 2000


class RewardActionStateError(DomainError):
    status_code = 422
    code = "invalid_action_state"
    default_message = "The reward action is not in a state that allows this."


@dataclass(frozen=True)
class DispatchOutcome:
    """What one run did. ``ran`` is False when there was nothing for it to do."""

    ran: bool
    status: str | None = None
    retry_in: float | None = None
    error: str = ""


SKIPPED = DispatchOutcome(ran=False)


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


def channel_status() -> dict[str, bool]:
    """Which reward types can be delivered now (False: its endpoint is not configured)."""
    return {reward_type: channel.configuration_error() is None for reward_type, channel in channels_all().items()}


def channel_problems() -> dict[str, str]:
    """The configuration error of each channel that cannot deliver now, for an admin warning."""
    problems = {reward_type: channel.configuration_error() for reward_type, channel in channels_all().items()}
    return {reward_type: problem for reward_type, problem in problems.items() if problem}


# --- one run -------------------------------------------------------------------------------------


def reward_action_dispatch(*, action_id) -> DispatchOutcome:
    """Deliver the action if it is ``pending`` and due; a no-op for any other state or a row another run holds.

    Must not be called inside a transaction: the channel call happens between two commits.
    """
    try:
        action_id = uuid.UUID(str(action_id))
    except ValueError:
        logger.warning("dispatch of a malformed reward action id ignored", extra={"action_id": str(action_id)})
        return SKIPPED
    claimed = _claim_in_one_statement(action_id) if connection.vendor == "postgresql" else None
    if claimed is None:
        claimed = _claim(action_id)  # also says why there is nothing to do
    if isinstance(claimed, DispatchOutcome):
        return claimed
    action, channel = claimed
    attempt = action.attempts
    started = time.perf_counter()
    outcome = _deliver(action, channel, attempt)
    _attempt_log(action, attempt, outcome, time.perf_counter() - started)
    return outcome


def _deliver(action: RewardAction, channel, attempt: int) -> DispatchOutcome:
    """One try through the channel, its outcome recorded on the row."""
    try:
        result = channel.deliver(action)
    except ChannelNotConfigured as exc:
        return _record_waiting(action, attempt, exc.message)
    except PermanentChannelError as exc:
        return _record_failed(action, attempt, exc.message)
    except TransientChannelError as exc:
        return _record_transient(action, attempt, exc.message, retry_after=exc.retry_after)
    except ChannelError as exc:
        return _record_transient(action, attempt, exc.message)
    except Exception as exc:
        # A bug or an outage nobody classified: retried like a transient error and, when the
        # attempts run out, visible to staff as failed, rather than stuck in ``dispatched``.
        logger.exception("reward action delivery raised", extra={"action_id": str(action.pk)})
        return _record_transient(action, attempt, f"Unexpected error: {exc.__class__.__name__}: {exc}")
    return _record_completed(action, attempt, result)


def _attempt_outcome(outcome: DispatchOutcome) -> str:
    """The attempt's outcome as logged and measured: completed, failed, retry, not_configured or superseded."""
    if outcome.status == Status.COMPLETED:
        return "completed"
    if outcome.status == Status.FAILED:
        return "failed"
    if outcome.status == Status.PENDING:
        return "retry" if outcome.retry_in is not None else "not_configured"
    return "superseded"  # the row moved on (re-queued and claimed again); this outcome was dropped


def _attempt_log(action: RewardAction, attempt: int, outcome: DispatchOutcome, seconds: float) -> None:
    """One line and one histogram sample per attempt. The error text stays on the row (last_error):
    it may quote the receiving service's answer, which is not logged."""
    label = _attempt_outcome(outcome)
    DISPATCH_SECONDS.labels(action.reward_type, label).observe(seconds)
    logger.info(
        "dispatch attempt",
        extra={
            "action_id": str(action.pk),
            "event_id": str(action.event_id),
            "channel": action.reward_type,
            "outcome": label,
            "attempt": attempt,
            "duration_ms": round(seconds * 1000, 2),
            "retry_in": round(outcome.retry_in, 3) if outcome.retry_in is not None else None,
        },
    )


_EVENT_FIELDS = ("id", "event_type", "source_service", "external_id")

_CLAIM_SQL = """
    WITH claimed AS (
        UPDATE {actions}
           SET status = %s, attempts = attempts + 1, next_attempt_at = NULL, updated_at = %s
         WHERE id = (
               SELECT id FROM {actions}
                WHERE id = %s AND status = %s AND reward_type = ANY(%s)
                  AND (next_attempt_at IS NULL OR next_attempt_at <= %s)
                  FOR UPDATE SKIP LOCKED)
     RETURNING {action_columns}
    )
    SELECT claimed.*, {event_columns} FROM claimed JOIN {events} event ON event.id = claimed.event_id
"""


@functools.cache
def _claim_sql() -> str:
    quote = connection.ops.quote_name
    return _CLAIM_SQL.format(
        actions=quote(RewardAction._meta.db_table),
        events=quote(EconomicEvent._meta.db_table),
        action_columns=returning_columns(RewardAction),
        event_columns=", ".join(f"event.{quote(name)}" for name in _EVENT_FIELDS),
    )


def _claim_in_one_statement(action_id):
    """The common claim as one PostgreSQL statement (its own transaction in autocommit mode):
    a ``pending``, due action of a configured channel becomes ``dispatched`` with attempts + 1.

    Returns ``(action, channel)``, or None when the row does not qualify — done, cancelled, not due,
    held by another run, or its channel unknown or unconfigured — which ``_claim`` then sorts out.
    """
    ready = [reward_type for reward_type, channel in channels_all().items() if channel.configuration_error() is None]
    if not ready:
        return None
    now = timezone.now()
    params = [Status.DISPATCHED, now, action_id, Status.PENDING, ready, now + EARLY_RUN_TOLERANCE]
    with prepared_cursor() as cursor:
        cursor.execute(_claim_sql(), params)
        row = cursor.fetchone()
    if row is None:
        return None
    split = len(row) - len(_EVENT_FIELDS)
    action = model_from_row(RewardAction, row[:split])
    action.event = EconomicEvent.from_db(connection.alias, list(_EVENT_FIELDS), list(row[split:]))
    return action, channel_for(action.reward_type)


@transaction.atomic
def _claim(action_id):
    """``pending`` → ``dispatched`` with attempts + 1, or a DispatchOutcome saying why not."""
    action = (
        RewardAction.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("event")
        .filter(pk=action_id, status=Status.PENDING)
        .first()
    )
    if action is None:
        return SKIPPED  # done, cancelled, locked, unknown, or another run holds it
    now = timezone.now()
    if action.next_attempt_at and action.next_attempt_at > now + EARLY_RUN_TOLERANCE:
        return SKIPPED  # a duplicate doorbell before the backoff is over; the scheduled run comes later
    try:
        channel = channel_for(action.reward_type)
    except PermanentChannelError as exc:
        _update(action, status=Status.FAILED, last_error=exc.message, next_attempt_at=None)
        return DispatchOutcome(ran=True, status=Status.FAILED, error=exc.message)
    problem = channel.configuration_error()
    if problem:
        # Not a try: nothing was sent. The sweeper comes back once the interval has passed.
        _update(action, last_error=problem, next_attempt_at=now + _waiting_delay())
        return DispatchOutcome(ran=True, status=Status.PENDING, error=problem)
    action.attempts += 1
    _update(action, status=Status.DISPATCHED, attempts=action.attempts, next_attempt_at=None)
    return action, channel


def _update(action: RewardAction, **fields) -> None:
    fields["updated_at"] = timezone.now()
    for name, value in fields.items():
        setattr(action, name, value)
    RewardAction.objects.filter(pk=action.pk).update(**fields)


def _record(action: RewardAction, attempt: int, **fields) -> bool:
    """Store an outcome unless the row moved on (re-queued by the sweeper and claimed again)."""
    fields["updated_at"] = timezone.now()
    if "last_error" in fields:
        fields["last_error"] = fields["last_error"][:MAX_ERROR_CHARS]
    stored = update_where(RewardAction, action.pk, fields, where={"status": Status.DISPATCHED, "attempts": attempt})
    if not stored:
        logger.warning(
            "reward action moved on before its outcome was recorded; outcome dropped",
            extra={"action_id": str(action.pk), "attempt": attempt, "outcome": fields.get("status")},
        )
    return bool(stored)


def _record_completed(action, attempt, result) -> DispatchOutcome:
    now = timezone.now()
    stored = _record(
        action, attempt, status=Status.COMPLETED, result=result, completed_at=now, last_error="", next_attempt_at=None
    )
    return DispatchOutcome(ran=stored, status=Status.COMPLETED if stored else None)


def _record_failed(action, attempt, message) -> DispatchOutcome:
    stored = _record(action, attempt, status=Status.FAILED, last_error=message, next_attempt_at=None)
    logger.warning(
        "reward action failed; see its last_error",
        extra={
            "action_id": str(action.pk),
            "event_id": str(action.event_id),
            "channel": action.reward_type,
            "attempt": attempt,
        },
    )
    return DispatchOutcome(ran=stored, status=Status.FAILED if stored else None, error=message)


def _record_transient(action, attempt, message, *, retry_after: float | None = None) -> DispatchOutcome:
    if attempt >= settings.DISPATCH_MAX_ATTEMPTS:
        return _record_failed(action, attempt, f"{message} (gave up after {attempt} attempts)")
    delay = backoff_with_jitter(attempt)
    if retry_after:
        # The receiver's Retry-After is honoured, but never beyond the configured cap.
        delay = max(delay, min(retry_after, float(settings.DISPATCH_RETRY_MAX_SECONDS)))
    stored = _record(
        action,
        attempt,
        status=Status.PENDING,
        last_error=message,
        next_attempt_at=timezone.now() + timedelta(seconds=delay),
    )
    if not stored:
        return DispatchOutcome(ran=False)
    return DispatchOutcome(ran=True, status=Status.PENDING, retry_in=delay, error=message)


def _record_waiting(action, attempt, message) -> DispatchOutcome:
    """Found unconfigured only while sending (e.g. an invalid URL): give the attempt back and wait."""
    stored = RewardAction.objects.filter(pk=action.pk, status=Status.DISPATCHED, attempts=attempt).update(
        status=Status.PENDING,
        attempts=attempt - 1,
        last_error=message[:MAX_ERROR_CHARS],
        next_attempt_at=timezone.now() + _waiting_delay(),
        updated_at=timezone.now(),
    )
    return DispatchOutcome(ran=bool(stored), status=Status.PENDING if stored else None, error=message)


def _waiting_delay() -> timedelta:
    return timedelta(seconds=float(settings.SWEEPER_INTERVAL_SECONDS))


# --- enqueueing ----------------------------------------------------------------------------------


def _tasks_run_inline() -> bool:
    from .tasks import dispatch_reward_action

    return bool(dispatch_reward_action.app.conf.task_always_eager)


def dispatch_enqueue(action_id, *, countdown: float | None = None) -> bool:
    """Ring the doorbell for one action now or after ``countdown`` seconds.

    With tasks running inline (no broker) a delayed run is not scheduled — it would run at once and
    recurse — and False is returned: the sweeper picks the action up when it is due.
    """
    from .tasks import dispatch_reward_action

    if countdown is not None and _tasks_run_inline():
        return False
    if countdown is None:
        dispatch_reward_action.delay(str(action_id))
    else:
        dispatch_reward_action.apply_async(args=[str(action_id)], countdown=max(0.0, countdown))
    return True


def dispatch_enqueue_many(action_ids) -> list[str]:
    """Ring the doorbell of each action now; returns the ids whose doorbell could not be rung.

    With a broker the messages go out in one batch (one Redis round trip for all of them). A
    message that cannot be built or sent is logged and skipped, the others still go: the rows are
    pending and the sweeper re-enqueues whatever was not sent.
    """
    action_ids = [str(action_id) for action_id in action_ids]
    if _tasks_run_inline():
        return [action_id for action_id in action_ids if not _ring(dispatch_enqueue, action_id)]
    from .tasks import dispatch_reward_action

    plain = all(_PLAIN_ID.fullmatch(action_id) for action_id in action_ids)
    lane = _doorbell_lane
    if plain and lane is not None and lane.usable(dispatch_reward_action):
        try:
            return _doorbells_push(lane.template, lane.client, action_ids)
        except Exception:
            # Try once more through the pool, which reconnects if it must. Should the failed push
            # have reached Redis after all, an action gets two doorbells: a run is a no-op unless
            # the action is still pending and due. Logged even when the pool then succeeds, so a
            # flaky broker connection shows up before it costs a doorbell.
            logger.warning(
                "doorbell push on the cached broker connection failed; retrying through the pool",
                exc_info=True,
                extra={"actions": len(action_ids)},
            )
            _doorbell_lane_drop()
    try:
        with dispatch_reward_action.app.producer_or_acquire() as producer:
            _doorbell_queue_declare(dispatch_reward_action, producer)
            template = _doorbell_template(dispatch_reward_action, producer.channel)
            if template is not None and plain:
                with producer.channel.conn_or_acquire() as client:
                    unsent = _doorbells_push(template, client, action_ids)
                _doorbell_lane_set(_DoorbellLane.here(dispatch_reward_action, template, client))
                return unsent
            with producer.batch():
                publish = _doorbell_publisher(dispatch_reward_action, producer)
                unsent = [action_id for action_id in action_ids if not _ring(publish, action_id)]
    except Exception:
        logger.warning(
            "could not publish the doorbells; left to the sweeper", exc_info=True, extra={"actions": len(action_ids)}
        )
        return action_ids
    return unsent


def _doorbell_queue_declare(task, producer) -> None:
    # Declared once per broker connection, as kombu caches it; checking that cache first skips the
    # copy of the queue kombu's maybe_declare binds (and discards) before it looks.
    queue = _doorbell_route(task).queue
    connection = producer.channel.connection
    if connection is None or hash(queue) not in connection.client.declared_entities:
        producer.maybe_declare(queue)


# An action id that can stand in a JSON string and a Python repr as it is (a UUID's text).
_PLAIN_ID = re.compile(r"[0-9A-Za-z-]{1,64}")


@dataclass(frozen=True)
class _DoorbellTemplate:
    """kombu's Redis envelope of one doorbell, with placeholders where one message differs from another.

    Built once per process from a message that goes through the same steps as a published one
    (Celery's ``create_task_message``, kombu's serializer, ``prepare_message`` and the channel's
    own routing and encoding), then filled per action with string replacements: building and
    publishing each message through Celery and kombu took about 0.1 ms of CPU per doorbell, most
    of an event's doorbell cost; filling the template takes a few microseconds.
    """

    key: str  # the Redis list kombu pushes to
    envelope: str  # JSON with the placeholders below
    body: str  # the serialized task body, before the channel's body encoding
    encode_body: Callable[[str], str]
    task_id: str
    action_id: str
    delivery_tag: str
    body_mark: str

    def fill(self, action_id: str) -> str:
        body = self.encode_body(self.body.replace(self.action_id, action_id))
        return (
            self.envelope.replace(self.task_id, str(uuid.uuid4()))
            .replace(self.delivery_tag, str(uuid.uuid4()))
            .replace(self.action_id, action_id)
            .replace(self.body_mark, body)
        )


# (task name, channel class, pid) -> template, or None where it does not apply. Per process too:
# Celery's ``origin`` header names the process that built the message.
_doorbell_templates: dict = {}


def _doorbell_template(task, channel) -> _DoorbellTemplate | None:
    """The template for ``task``'s doorbells on this kind of channel, or None where it does not apply
    (a transport other than this project's Redis one, compression, an exchange other than the default
    one, a queue with an expiry): those doorbells take the ``_doorbell_publisher`` path."""
    from config.broker import Channel

    if not isinstance(channel, Channel):
        return None
    route = _doorbell_route(task)
    if route.exchange or route.compression or channel._expires.get(route.routing_key):
        return None
    cache_key = (task.name, type(channel), os.getpid())
    if cache_key not in _doorbell_templates:
        _doorbell_templates[cache_key] = _doorbell_template_new(task, channel)
    return _doorbell_templates[cache_key]


def _doorbell_template_new(task, channel) -> _DoorbellTemplate | None:
    route = _doorbell_route(task)
    task_id, action_id, delivery_tag, body_mark = (str(uuid.uuid4()) for _ in range(4))
    args = [action_id]
    message = task.app.amqp.create_task_message(
        task_id,
        route.task_name,
        args,
        {},
        time_limit=route.time_limit,
        soft_time_limit=route.soft_time_limit,
        ignore_result=route.ignore_result,
        argsrepr=repr(args),
        kwargsrepr="{}",
    )
    content_type, content_encoding, body = kombu_serialization.dumps(message.body, serializer=route.serializer)
    properties = {**message.properties, "delivery_mode": maybe_delivery_mode(route.delivery_mode)}
    envelope = channel.prepare_message(body, 0, content_type, content_encoding, message.headers, properties)
    channel._inplace_augment_message(envelope, route.exchange, route.routing_key)  # as basic_publish does
    envelope["properties"]["delivery_tag"] = delivery_tag
    encoding = envelope["properties"]["body_encoding"]
    envelope["body"] = body_mark
    text = kombu_json.dumps(envelope)
    if text.count(body_mark) != 1 or task_id not in text or delivery_tag not in text or action_id not in body:
        return None  # not the envelope this template knows how to fill
    codec = channel.codecs.get(encoding) if encoding else None
    return _DoorbellTemplate(
        key=channel._q_for_pri(route.routing_key, channel._get_message_priority(envelope, reverse=False)),
        envelope=text,
        body=body,
        encode_body=codec.encode if codec else str,
        task_id=task_id,
        action_id=action_id,
        delivery_tag=delivery_tag,
        body_mark=body_mark,
    )


def _doorbells_push(template: _DoorbellTemplate, client, action_ids: list[str]) -> list[str]:
    """One LPUSH of a filled envelope per action: one command, one round trip (a pipeline of one LPUSH
    each, as kombu's batch sends, costs a quarter more CPU for two)."""
    envelopes, unsent = [], []
    for action_id in action_ids:
        try:
            envelopes.append(template.fill(action_id))
        except Exception:
            logger.warning(
                "could not publish a doorbell; left to the sweeper", exc_info=True, extra={"action_id": action_id}
            )
            unsent.append(action_id)
    if envelopes:
        client.lpush(template.key, *envelopes)  # pushed in this order, as one LPUSH each would
    return unsent


@dataclass(frozen=True, eq=False)
class _DoorbellLane:
    """Where the last template doorbells went: the template and the Redis client of the channel
    they were pushed on, so the next ones need neither a producer from kombu's pool nor the check
    that the queue is declared (about 0.1 ms of CPU per commit).

    A redis-py client is safe to share between threads and reconnects by itself. The lane belongs
    to one process, one task and one producer pool: a fork, or Celery replacing its pool (a new
    broker URL), makes it unusable, and an error while pushing through it drops it.
    """

    task: object
    template: _DoorbellTemplate
    client: object
    producer_pool: object
    pid: int

    @classmethod
    def here(cls, task, template: _DoorbellTemplate, client) -> _DoorbellLane:
        """The lane of this process, on the producer pool Celery uses now."""
        return cls(task, template, client, task.app.amqp.producer_pool, os.getpid())

    def usable(self, task) -> bool:
        return task is self.task and self.pid == os.getpid() and task.app.amqp.producer_pool is self.producer_pool


_doorbell_lane: _DoorbellLane | None = None


def _doorbell_lane_set(lane: _DoorbellLane) -> None:
    global _doorbell_lane  # noqa: PLW0603 - one per process, replaced whole
    _doorbell_lane = lane


def _doorbell_lane_drop() -> None:
    global _doorbell_lane  # noqa: PLW0603
    _doorbell_lane = None


def _doorbell_publisher(task, producer):
    """Publish a run of ``task`` for one action id through ``producer`` (inside its batch).

    The message is Celery's own (``app.amqp.create_task_message``, the builder ``apply_async`` uses),
    routed and sent as ``app.amqp.send_task_message`` would send it. ``apply_async`` also merges
    per-call options, sends publish signals and wraps every publish in a retry loop, which in a batch
    only guards appending to a buffer (the batch's one network write is at its end); skipping that
    takes two doorbells from about 1.9 to 1.2 ms of CPU. Receivers of Celery's publish signals (a
    tracer, say) do not see these messages. Acks and result handling come from the task on the
    worker, as for any message; the message carries the task's time limits as apply_async's does.
    """
    route = _doorbell_route(task)
    create_task_message = task.app.amqp.create_task_message

    def publish(action_id: str) -> None:
        args = [action_id]
        message = create_task_message(
            str(uuid.uuid4()),
            route.task_name,
            args,
            {},
            time_limit=route.time_limit,
            soft_time_limit=route.soft_time_limit,
            ignore_result=route.ignore_result,
            argsrepr=repr(args),  # what Celery's saferepr gives for one short string, without its cost
            kwargsrepr="{}",
        )
        producer.publish(
            message.body,
            exchange=route.exchange,
            routing_key=route.routing_key,
            headers=message.headers,
            serializer=route.serializer,
            compression=route.compression,
            delivery_mode=route.delivery_mode,
            **message.properties,
        )

    return publish


@dataclass(frozen=True)
class _Route:
    task_name: str
    time_limit: float | None
    soft_time_limit: float | None
    ignore_result: bool
    queue: object
    exchange: str
    routing_key: str
    serializer: str
    compression: str | None
    delivery_mode: int


@functools.cache
def _doorbell_route(task) -> _Route:
    """Where and how ``task``'s messages go, read once per process: Celery's configuration lookups
    (and each attribute read through a shared task's proxy) cost more than building the message."""
    app = task.app
    conf = app.conf
    queue = app.amqp.router.route({}, task.name, args=(), kwargs={})["queue"]
    if queue.exchange.type == "direct":
        exchange, routing_key = "", queue.name  # the default exchange, as send_task_message converts it
    else:
        exchange, routing_key = queue.exchange.name, queue.routing_key
    return _Route(
        task_name=task.name,
        time_limit=task.time_limit,
        soft_time_limit=task.soft_time_limit,
        ignore_result=task.ignore_result,
        queue=queue,
        exchange=exchange,
        routing_key=routing_key,
        serializer=conf.task_serializer,
        compression=conf.task_compression,
        delivery_mode=queue.exchange.delivery_mode or conf.task_default_delivery_mode,
    )


def _ring(publish, action_id: str) -> bool:
    try:
        publish(action_id)
    except Exception:
        logger.warning(
            "could not publish a doorbell; left to the sweeper", exc_info=True, extra={"action_id": action_id}
        )
        return False
    return True


def dispatch_enqueue_on_commit(action_ids) -> None:
    """Ring the doorbells once the transaction commits. A broker outage does not undo the commit
    (a robust callback): the rows are pending and the sweeper re-enqueues them."""
    action_ids = [str(action_id) for action_id in action_ids]
    if action_ids:
        transaction.on_commit(_doorbells(action_ids), robust=True)


def _doorbells(action_ids: list[str]):
    # A named function, not a partial: Django names the callback when it logs a robust failure.
    def ring_dispatch_doorbells():
        dispatch_enqueue_many(action_ids)

    return ring_dispatch_doorbells


# --- sweeper -------------------------------------------------------------------------------------


def reward_actions_sweep(*, limit: int = SWEEP_LIMIT) -> int:
    """Re-enqueue due ``pending``/``dispatched`` actions nobody touched for ``SWEEPER_STALE_SECONDS``.

    Rows are claimed with SKIP LOCKED and touched (a ``dispatched`` one goes back to ``pending``: the
    run that held it is gone), so concurrent sweepers never enqueue the same action. Returns how many
    were re-enqueued.
    """
    now = timezone.now()
    stale_before = now - timedelta(seconds=float(settings.SWEEPER_STALE_SECONDS))
    with transaction.atomic():
        ids = list(
            RewardAction.objects.select_for_update(skip_locked=True)
            .filter(status__in=[Status.PENDING, Status.DISPATCHED], updated_at__lt=stale_before)
            .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
            .order_by("updated_at")
            .values_list("pk", flat=True)[:limit]
        )
        if ids:
            RewardAction.objects.filter(pk__in=ids).update(status=Status.PENDING, updated_at=now)
            dispatch_enqueue_on_commit(ids)
    if ids:
        logger.info("sweeper re-enqueued reward actions", extra={"count": len(ids)})
    return len(ids)


# --- staff ---------------------------------------------------------------------------------------


def _locked_action(action_id) -> RewardAction:
    action = RewardAction.objects.select_for_update(of=("self",)).filter(pk=action_id).first()
    if action is None:
        raise NotFound("No such reward action.", details={"action_id": str(action_id)})
    return action


@transaction.atomic
def reward_action_retry(*, action_id, user=None) -> RewardAction:
    """A ``failed`` action goes back to ``pending`` (its attempts kept) and is dispatched after commit.

    Attempts count every try, and the limit is on that total: a retried action that already used up
    ``DISPATCH_MAX_ATTEMPTS`` gets one more try, and is ``failed`` again if that one fails too.
    """
    action = _locked_action(action_id)
    if action.status != Status.FAILED:
        raise RewardActionStateError(
            f"Only a failed reward action can be retried; this one is {action.status}.",
            details={"action_id": str(action.pk), "status": action.status},
        )
    _update(action, status=Status.PENDING, next_attempt_at=timezone.now())
    dispatch_enqueue_on_commit([action.pk])
    logger.info(
        "reward action retried by staff",
        extra={"action_id": str(action.pk), "user": getattr(user, "username", None)},
    )
    return action


CANCELLABLE = (Status.LOCKED, Status.PENDING, Status.FAILED)


@transaction.atomic
def reward_action_cancel(*, action_id, reason: str, user) -> RewardAction:
    """Cancel a ``locked``, ``pending`` or ``failed`` action, recording who and why; it is never sent after."""
    reason = (reason or "").strip()
    if not reason:
        raise RewardActionStateError("A reason is required to cancel a reward action.", details={"reason": "required"})
    if user is None:
        raise RewardActionStateError("Cancelling a reward action needs the staff user doing it.")
    action = _locked_action(action_id)
    if action.status not in CANCELLABLE:
        raise RewardActionStateError(
            f"Only a locked, pending or failed reward action can be cancelled; this one is {action.status}.",
            details={"action_id": str(action.pk), "status": action.status},
        )
    _update(action, status=Status.CANCELLED, cancel_reason=reason, cancelled_by=user, next_attempt_at=None)
    logger.info(
        "reward action cancelled by staff",
        extra={"action_id": str(action.pk), "user": getattr(user, "username", None)},
    )
    return action
