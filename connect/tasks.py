"""Thin Celery tasks: load by id, call a service, schedule what comes next. The row is the source of truth."""

import logging

from celery import shared_task
from django.conf import settings

logger = logging.getLogger("connect.dispatch")

# One delivery is a claim, at most one HTTP call bounded by the channel timeouts, and a record;
# anything longer is stuck. The soft limit turns into a transient error on the action. With the
# default timings the hard limit (58 s) is below SWEEPER_STALE_SECONDS (60 s), so the sweeper never
# re-queues a run that is still alive; if it did, the guarded record and idempotent channels keep that safe.
DISPATCH_SOFT_TIME_LIMIT = min(
    settings.CELERY_TASK_SOFT_TIME_LIMIT,
    int(settings.CHANNEL_CONNECT_TIMEOUT_SECONDS + settings.CHANNEL_READ_TIMEOUT_SECONDS) + 30,
)
DISPATCH_TIME_LIMIT = min(settings.CELERY_TASK_TIME_LIMIT, DISPATCH_SOFT_TIME_LIMIT + 15)


@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    soft_time_limit=DISPATCH_SOFT_TIME_LIMIT,
    time_limit=DISPATCH_TIME_LIMIT,
)
def dispatch_reward_action(action_id: str) -> str | None:
    """Deliver one RewardAction; safe to run twice or in parallel (a no-op unless it is pending and due)."""
    from .dispatch import dispatch_enqueue, reward_action_dispatch

    outcome = reward_action_dispatch(action_id=action_id)
    if outcome.retry_in is not None:
        # Without a broker (tasks inline) this is skipped and the sweeper retries when due.
        try:
            dispatch_enqueue(action_id, countdown=outcome.retry_in)
        except Exception:
            # The row is pending with its next_attempt_at: the sweeper retries it when due.
            logger.warning(
                "could not schedule the retry; left to the sweeper", exc_info=True, extra={"action_id": action_id}
            )
    return outcome.status


@shared_task(acks_late=True, ignore_result=True, soft_time_limit=60, time_limit=90)
def sweep_reward_actions() -> int:
    """Celery beat: re-enqueue actions a lost message or a killed worker left behind."""
    from .dispatch import reward_actions_sweep

    return reward_actions_sweep()


@shared_task(acks_late=False, ignore_result=True, soft_time_limit=3600, time_limit=3700)
def backtest_execute_task(run_id: str) -> None:
    """Run one backtest an admin started (connect.backtest_runs); a no-op unless it is still queued."""
    from .backtest_runs import backtest_execute

    backtest_execute(run_id=run_id)
