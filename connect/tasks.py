"""Thin Celery tasks: load by id, call a service, retry. The database row is the source of truth."""

from celery import shared_task


@shared_task(acks_late=True, ignore_result=True)
def dispatch_reward_action(action_id: str) -> None:
    from .dispatch import reward_action_dispatch

    reward_action_dispatch(action_id=action_id)
