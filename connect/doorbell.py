"""The doorbell: the broker message that starts a drain of the outbox, and the sweeper that rings for
whatever a lost message or a killed worker left behind.

The broker carries no work, only "there is work": an ingest rings at most one doorbell per event and,
under load, far fewer. A process rings at once when it has not rung for ``DISPATCH_DOORBELL_SECONDS``;
otherwise it schedules one doorbell for the end of that window (a message with a countdown), and every
commit until then is covered by it: the drain it starts runs after those commits and claims whatever
is due. A lost doorbell only delays: the sweeper finds every due action.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .models import RewardAction

logger = logging.getLogger("connect.dispatch")

Status = RewardAction.Status
SWEEP_LIMIT = 500

_ring_lock = threading.Lock()
# Monotonic time at which the latest doorbell of this process starts (or started) its drain.
_last_ring = float("-inf")


def _drain_task():
    from .tasks import drain_reward_actions

    return drain_reward_actions


def doorbell_ring(*, first_ids=()) -> bool:
    """Have a worker drain the outbox, ``first_ids`` first; False when no message was sent (another one
    of this process covers the moment, or the broker refused it: the sweeper then finds the actions).

    With tasks running inline (no broker) the drain runs here and now.
    """
    global _last_ring  # noqa: PLW0603 - one per process, guarded by _ring_lock
    task = _drain_task()
    first_ids = [str(action_id) for action_id in first_ids]
    countdown, reserved = None, None
    if not task.app.conf.task_always_eager:
        window = max(0.0, float(settings.DISPATCH_DOORBELL_SECONDS))
        with _ring_lock:
            now = time.monotonic()
            if _last_ring >= now:
                return False  # a doorbell scheduled for later covers this moment
            countdown = None if now >= _last_ring + window else _last_ring + window - now
            _last_ring = reserved = now if countdown is None else _last_ring + window
    try:
        if countdown is None:
            task.apply_async(args=[first_ids])
        else:
            task.apply_async(args=[[]], countdown=countdown)
    except Exception:
        with _ring_lock:
            if reserved is not None and _last_ring == reserved:
                _last_ring = float("-inf")  # the next commit rings again
        logger.warning("could not ring the dispatch doorbell; left to the sweeper", exc_info=True)
        return False
    return True


def doorbell_ring_later(*, countdown: float) -> bool:
    """One doorbell after ``countdown`` seconds (when retries a drain scheduled fall due). With tasks
    running inline it is not scheduled — it would run at once — and False is returned: the
    sweeper picks the actions up when they are due."""
    task = _drain_task()
    if task.app.conf.task_always_eager:
        return False
    try:
        task.apply_async(args=[[]], countdown=max(0.0, countdown))
    except Exception:
        logger.warning("could not schedule the retry doorbell; left to the sweeper", exc_info=True)
        return False
    return True


def doorbell_ring_on_commit(action_ids) -> None:
    """Ring once the transaction that made ``action_ids`` pending commits. A broker outage does not
    undo the commit (a robust callback): the rows are pending and the sweeper finds them."""
    action_ids = [str(action_id) for action_id in action_ids]
    if not action_ids:
        return

    # A named function, not a partial: Django names the callback when it logs a robust failure.
    def ring_dispatch_doorbell():
        doorbell_ring(first_ids=action_ids)

    transaction.on_commit(ring_dispatch_doorbell, robust=True)


def reward_actions_sweep(*, limit: int = SWEEP_LIMIT) -> int:
    """Ring one doorbell for the due ``pending``/``dispatched`` actions nobody touched for
    ``SWEEPER_STALE_SECONDS``; returns how many it found.

    Rows are claimed with SKIP LOCKED and touched (a ``dispatched`` one goes back to ``pending``: the
    run that held it is gone), so concurrent sweepers never re-queue the same action.
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
            doorbell_ring_on_commit(ids)
    if ids:
        logger.info("sweeper re-enqueued reward actions", extra={"count": len(ids)})
    return len(ids)
