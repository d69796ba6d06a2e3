from django.db.models import Prefetch

from points.models import ServiceClient

from .models import EconomicEvent, RewardAction


def event_with_actions(*, event_id) -> EconomicEvent | None:
    return (
        EconomicEvent.objects.prefetch_related(
            Prefetch("reward_actions", queryset=RewardAction.objects.order_by("created_at", "id"))
        )
        .filter(pk=event_id)
        .first()
    )


def event_get(*, event_id) -> EconomicEvent | None:
    return EconomicEvent.objects.filter(pk=event_id).first()


def actions_in_read_order(actions: list[RewardAction]) -> list[RewardAction]:
    """Actions just stored, in the order ``event_with_actions`` reads an event's actions back."""
    return sorted(actions, key=lambda action: (action.created_at, action.pk))


def reward_actions_filtered(*, target_user_id=None, status=None, reward_type=None, event_id=None, reverses=None):
    queryset = RewardAction.objects.all()
    if reverses:
        queryset = queryset.filter(reverses_id=reverses)
    if target_user_id:
        queryset = queryset.filter(target_user_id=target_user_id)
    if status:
        queryset = queryset.filter(status=status)
    if reward_type:
        queryset = queryset.filter(reward_type=reward_type)
    if event_id:
        queryset = queryset.filter(event_id=event_id)
    return queryset


def service_client_active(*, name: str) -> ServiceClient | None:
    """The active service client called ``name``: who a bus message's ``source_service`` names."""
    return ServiceClient.objects.filter(name=name, is_active=True).first()
