"""Refunds and cancellations (SPEC §12): an event that reverses what an earlier event caused.

Runs inside the reversal event's ingest transaction, before the reversal event's own rules. For each
reward action of the original, ``floor(gross amount × fraction)`` is taken back, never more in total
than the gross amount over any number of reversals:

- an action nothing was ever delivered for (``locked``, ``failed``, or ``pending`` and never
  attempted) is reduced in place, or ``cancelled`` when nothing is left;
- an action that was (or may have been) delivered gets a **reversal action**: ``pending``, same target,
  channel and rule, ``reverses`` = the original. Dispatch delivers it once the original's own delivery
  has ended (SPEC §8: a ledger reversal with ``allow_partial`` for points, the channel's reverse
  endpoint for nft and g2a).

``reversed_amount`` on the original counts everything taken back, reductions and reversal actions
alike, so a later partial refund is measured against what is left.
"""

from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

from django.db.models import Case, F, OuterRef, Subquery, Sum, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from config.api.errors import DomainError

from .counters import reward_action_counters_refund
from .models import EconomicEvent, RewardAction

# How an action a reversal reduced to nothing is cancelled: this, then the reversal event's id.
CANCELLED_BY_REVERSAL = "reversed by "


class OriginalEventNotFound(DomainError):
    code = "original_event_not_found"
    default_message = "No event of this source_service has that external_id."


class EventNotReversible(DomainError):
    code = "not_reversible"
    default_message = "This event cannot be reversed."


@dataclass(frozen=True)
class ReversalOutcome:
    """What one reversal event did to its original's actions."""

    reduced: list[RewardAction]
    reversal_actions: list[RewardAction]
    fully_reversed: list[RewardAction]


def reversal_original_lock(*, source_service: str, external_id: str) -> EconomicEvent:
    """The original event of a reversal, row-locked until commit so that reversals of one event
    run one after the other (each sees what the previous one took back)."""
    original = (
        EconomicEvent.objects.select_for_update().filter(source_service=source_service, external_id=external_id).first()
    )
    if original is None:
        raise OriginalEventNotFound(details={"reverses_external_id": external_id})
    if original.reverses_id is not None:
        raise EventNotReversible(
            "A reversal event cannot itself be reversed.", details={"reverses_external_id": external_id}
        )
    return original


def reversed_share(gross: int, fraction: Decimal) -> int:
    """``floor(gross × fraction)`` in exact decimal arithmetic."""
    return int((Decimal(gross) * fraction).to_integral_value(rounding=ROUND_FLOOR))


def gross_amount(action: RewardAction) -> int:
    """What the action was planned for, before any reversal reduced it in place, as stored now.

    In-place reductions lower ``amount`` and raise ``reversed_amount``; reversal actions only raise
    ``reversed_amount``. So the gross is ``amount`` plus what was reduced in place, which is
    ``reversed_amount`` less what the live reversal actions carry (``gross_amount_expression``).
    """
    rows = RewardAction.objects.filter(pk=action.pk).annotate(gross=gross_amount_expression())
    return rows.values_list("gross", flat=True).get()


def gross_amount_expression():
    """``gross_amount`` of each row of a RewardAction queryset, as an expression (``.annotate(gross=…)``)."""
    carried = (
        RewardAction.objects.filter(reverses=OuterRef("pk"))
        .exclude(status=RewardAction.Status.CANCELLED)
        .order_by()
        .values("reverses")
        .annotate(total=Sum("amount"))
        .values("total")
    )
    return Case(
        When(reversed_amount=0, then=F("amount")),
        default=F("amount") + F("reversed_amount") - Coalesce(Subquery(carried), 0),
    )


def _reducible(action: RewardAction) -> bool:
    """Nothing of it can have reached a channel: its amount may still change."""
    if action.status in (RewardAction.Status.LOCKED, RewardAction.Status.FAILED):
        return True
    return action.status == RewardAction.Status.PENDING and action.attempts == 0


def event_reversal_apply(*, event: EconomicEvent, original: EconomicEvent, fraction: Decimal) -> ReversalOutcome:
    """Take back ``fraction`` of what ``original`` caused; caller holds the original's row lock and
    runs in the reversal event's transaction. Returns the reversal actions it created (unsaved rows
    are inserted here)."""
    now = timezone.now()
    reduced, created, fully = [], [], []
    originals = (
        RewardAction.objects.select_for_update()
        .filter(event=original, reverses__isnull=True)
        .exclude(status=RewardAction.Status.CANCELLED)
        .order_by("pk")
    )
    for action in originals:
        gross = gross_amount(action)
        share = min(reversed_share(gross, fraction), gross - action.reversed_amount)
        if share <= 0:
            continue
        action.reversed_amount += share
        action.updated_at = now
        # Budgets count the share back, caps the whole action once nothing of it is left: a
        # refunded badge can be earned again (before ``amount`` changes: the charge was the amount).
        reward_action_counters_refund(action=action, amount=share, whole=action.reversed_amount == gross)
        if _reducible(action):
            action.amount -= share
            fields = ["amount", "reversed_amount", "updated_at"]
            if action.amount == 0:
                action.status = RewardAction.Status.CANCELLED
                action.cancel_reason = f"{CANCELLED_BY_REVERSAL}{event.pk}"
                action.next_attempt_at = None
                fields += ["status", "cancel_reason", "next_attempt_at"]
            action.save(update_fields=fields)
            reduced.append(action)
        else:
            action.save(update_fields=["reversed_amount", "updated_at"])
            created.append(
                RewardAction(
                    event=event,
                    rule_id=action.rule_id,
                    rule_code=action.rule_code,
                    rule_version=action.rule_version,
                    reward_line_id=action.reward_line_id,
                    target_user_id=action.target_user_id,
                    reward_type=action.reward_type,
                    amount=share,
                    params={},
                    status=RewardAction.Status.PENDING,
                    reverses=action,
                    next_attempt_at=now,
                    created_at=now,
                    updated_at=now,
                )
            )
        if action.reversed_amount == gross:
            fully.append(action)
    RewardAction.objects.bulk_create(created)
    return ReversalOutcome(reduced=reduced, reversal_actions=created, fully_reversed=fully)
