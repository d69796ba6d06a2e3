"""Thin Celery tasks: drain the outbox when a doorbell rings, sweep for what a lost doorbell left behind."""

import math
import uuid

from celery import shared_task
from django.conf import settings

# A drain stops taking new batches after DISPATCH_DRAIN_SECONDS; its last batch may then still wait
# for every HTTP call at CHANNEL_CONCURRENCY at a time, each bounded by the channel timeouts.
_BATCH_SECONDS = math.ceil(max(1, settings.DISPATCH_BATCH_SIZE) / max(1, settings.CHANNEL_CONCURRENCY)) * (
    settings.CHANNEL_CONNECT_TIMEOUT_SECONDS + settings.CHANNEL_READ_TIMEOUT_SECONDS
)
DRAIN_SOFT_TIME_LIMIT = int(settings.DISPATCH_DRAIN_SECONDS + _BATCH_SECONDS) + 30
DRAIN_TIME_LIMIT = DRAIN_SOFT_TIME_LIMIT + 15


@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    soft_time_limit=DRAIN_SOFT_TIME_LIMIT,
    time_limit=DRAIN_TIME_LIMIT,
)
def drain_reward_actions(first_ids=()) -> int:
    """Deliver due actions in batches, ``first_ids`` first; safe to run twice or in parallel."""
    from .delivery import reward_actions_drain
    from .doorbell import doorbell_ring, doorbell_ring_later

    result = reward_actions_drain(first_ids=[action_id for action_id in map(_parsed, first_ids or ()) if action_id])
    if result.more:
        doorbell_ring()  # the rest in a new run, so no run outlives its time limit
    for countdown in result.retry_in:
        doorbell_ring_later(countdown=countdown)
    return result.delivered


@shared_task(acks_late=True, ignore_result=True, soft_time_limit=60, time_limit=90)
def sweep_reward_actions() -> int:
    """Celery beat: ring for the actions a lost doorbell or a killed worker left behind."""
    from .doorbell import reward_actions_sweep

    return reward_actions_sweep()


@shared_task(acks_late=True, ignore_result=True, soft_time_limit=300, time_limit=330)
def notify_points_expiring() -> int:
    """Celery beat: ``points.expiring`` webhooks for lots expiring within POINTS_EXPIRY_NOTICE_DAYS."""
    from .webhooks.expiring import points_expiring_announce

    return points_expiring_announce()


def _parsed(action_id) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(action_id))
    except ValueError:
        return None


@shared_task(acks_late=False, ignore_result=True, soft_time_limit=3600, time_limit=3700)
def backtest_execute_task(run_id: str) -> None:
    """Run one backtest an admin started (connect.backtest_runs); a no-op unless it is still queued."""
    from .backtest_runs import backtest_execute

    backtest_execute(run_id=run_id)
