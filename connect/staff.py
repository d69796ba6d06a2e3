"""Staff actions on RewardActions (the operations admin): retry a failed one, cancel one with a reason."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from config.api.errors import DomainError, NotFound
from points.selectors import transaction_ids_by_key

from .doorbell import doorbell_ring_on_commit
from .models import RewardAction

logger = logging.getLogger("connect.dispatch")

Status = RewardAction.Status


class RewardActionStateError(DomainError):
    status_code = 422
    code = "invalid_action_state"
    default_message = "The reward action is not in a state that allows this."


def _update(action: RewardAction, **fields) -> None:
    fields["updated_at"] = timezone.now()
    for name, value in fields.items():
        setattr(action, name, value)
    RewardAction.objects.filter(pk=action.pk).update(**fields)


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
    doorbell_ring_on_commit([action.pk])
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
    posted = _ledger_posting(action)
    if posted is not None:
        raise RewardActionStateError(
            f"An earlier attempt of this reward action posted ledger transaction {posted} (its worker "
            "stopped before recording it), so it cannot be cancelled: dispatched again it is recorded "
            "as completed (the credit is replayed, not paid twice), and a refund of its event takes it back.",
            details={"action_id": str(action.pk), "transaction_id": str(posted)},
        )
    _update(action, status=Status.CANCELLED, cancel_reason=reason, cancelled_by=user, next_attempt_at=None)
    logger.info(
        "reward action cancelled by staff",
        extra={"action_id": str(action.pk), "user": getattr(user, "username", None)},
    )
    return action


def _ledger_posting(action: RewardAction):
    """The id of the ledger transaction an earlier attempt of this points action posted, or None.

    A ``pending`` or ``failed`` action that was attempted may have been paid: a worker that stopped
    after the ledger committed and before the outcome was recorded leaves it ``dispatched``, which
    the sweeper puts back to ``pending``. Cancelled, it would stay paid for good (a refund skips
    cancelled actions). Other channels' services are not asked: their own idempotency keeps a retry
    from paying twice, and nothing here can tell whether they paid.
    """
    if action.reward_type != RewardAction.RewardType.POINTS or action.attempts == 0:
        return None
    ids = transaction_ids_by_key(settings.CONNECT_LEDGER_SOURCE, [str(action.pk)])
    return ids[0] if ids else None
