"""Connect's readers for the rules admin (``rules.admin_sources``): rule activity, recent events of a
type for the simulator's suggestions, and one stored event as simulator JSON."""

import uuid
from datetime import datetime, timedelta

from django.db.models import Count, F, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from rules.admin_sources import RuleActivity, rules_admin_sources_register

from .models import EconomicEvent, RewardAction

RECENT_TYPES_DAYS = 30
RECENT_TYPES_SCAN = 2000


def rule_activity(rule_ids: list[int], since: datetime) -> dict[int, RuleActivity]:
    """Per rule since ``since``: events it made actions for, and the points it paid.

    Reversal actions (SPEC §12) are not firings: they carry the original's rule but were made by a
    refund. Paid is what the rule's completed points actions credited less what its completed
    reversal actions took back (their amount less the shortfall the user had already spent).
    """
    points_done = Q(reward_type=RewardAction.RewardType.POINTS, status=RewardAction.Status.COMPLETED)
    rows = (
        RewardAction.objects.filter(rule_id__in=rule_ids, created_at__gte=since)
        .values("rule_id")
        .annotate(
            fired=Count("event_id", distinct=True, filter=Q(reverses__isnull=True)),
            credited=Sum("amount", filter=points_done & Q(reverses__isnull=True), default=0),
            taken_back=Sum(
                F("amount") - Coalesce("shortfall", 0), filter=points_done & Q(reverses__isnull=False), default=0
            ),
        )
        .order_by()
    )
    return {
        row["rule_id"]: RuleActivity(fired=row["fired"], points=row["credited"] - row["taken_back"]) for row in rows
    }


def recent_event_types() -> list[str]:
    """Types of the newest events (a bounded scan of the received_at index, not the whole table)."""
    since = timezone.now() - timedelta(days=RECENT_TYPES_DAYS)
    newest = EconomicEvent.objects.filter(received_at__gte=since).order_by("-received_at")[:RECENT_TYPES_SCAN]
    return list(dict.fromkeys(newest.values_list("event_type", flat=True)))


def event_as_simulator_json(event: EconomicEvent) -> dict:
    return {
        "event_type": event.event_type,
        "actor_user_id": event.actor_user_id,
        "primary_subject_user_id": event.primary_subject_user_id,
        "context": event.context,
        "occurred_at": event.occurred_at.isoformat() if event.occurred_at else None,
    }


def recent_events(event_type: str, limit: int) -> list[dict]:
    newest = EconomicEvent.objects.filter(event_type=event_type).order_by("-received_at")[:limit]
    return [event_as_simulator_json(event) for event in newest]


def event_payload(event_id: str) -> dict | None:
    try:
        pk = uuid.UUID(str(event_id))
    except ValueError:
        return None
    event = EconomicEvent.objects.filter(pk=pk).first()
    return event_as_simulator_json(event) if event else None


def register() -> None:
    rules_admin_sources_register(
        activity=rule_activity,
        recent_event_types=recent_event_types,
        recent_events=recent_events,
        event_payload=event_payload,
    )
