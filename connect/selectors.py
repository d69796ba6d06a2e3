from django.db.models import Prefetch

from .models import EconomicEvent, RewardAction


def event_with_actions(*, event_id) -> EconomicEvent | None:
    return (
        EconomicEvent.objects.prefetch_related(
            Prefetch("reward_actions", queryset=RewardAction.objects.order_by("created_at", "id"))
        )
        .filter(pk=event_id)
        .first()
    )


def event_with_given_actions(event: EconomicEvent, actions: list[RewardAction]) -> EconomicEvent:
    """The event with the actions its ingestion just stored, as ``event_with_actions`` would read
    them back (same order), without reading them back."""
    queryset = event.reward_actions.all()
    queryset._result_cache = sorted(actions, key=lambda action: (action.created_at, action.pk))
    queryset._prefetch_done = True
    event._prefetched_objects_cache = {"reward_actions": queryset}
    return event


def reward_actions_filtered(*, target_user_id=None, status=None, reward_type=None, event_id=None):
    queryset = RewardAction.objects.all()
    if target_user_id:
        queryset = queryset.filter(target_user_id=target_user_id)
    if status:
        queryset = queryset.filter(status=status)
    if reward_type:
        queryset = queryset.filter(reward_type=reward_type)
    if event_id:
        queryset = queryset.filter(event_id=event_id)
    return queryset
