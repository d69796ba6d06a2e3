"""What Connect reports by webhook, each called inside the transaction of what it reports."""

from rest_framework import serializers

from ..models import RewardAction
from ..serializers import RewardActionOut
from .models import Kind
from .services import webhook_deliveries_enqueue_many

# Moments as the API shows them (the lots list's expires_at).
_MOMENT = serializers.DateTimeField()

_KIND_OF_STATUS = {
    RewardAction.Status.COMPLETED: Kind.REWARD_ACTION_COMPLETED,
    RewardAction.Status.FAILED: Kind.REWARD_ACTION_FAILED,
}


def reward_actions_outcome_notify(*, actions: list[RewardAction]) -> int:
    """``reward_action.completed`` / ``reward_action.failed`` for the actions among ``actions`` in those
    statuses, each as the API shows it; other statuses are ignored. ``actions`` hold their stored
    values (status, result, completed_at, last_error). Must run in the transaction that recorded the
    outcomes; returns how many deliveries were written."""
    written = 0
    for status, kind in _KIND_OF_STATUS.items():
        chosen = [action for action in actions if action.status == status]
        if chosen:
            # Serialized only if some subscription wants the kind (the generator is consumed then).
            payloads = ((RewardActionOut(action).data, None) for action in chosen)
            written += webhook_deliveries_enqueue_many(kind=kind, payloads=payloads)
    return written


def points_expiring_notify(*, lots) -> int:
    """``points.expiring`` for each of ``lots`` (rows of ``points.selectors.lots_expiring_soon``), at most
    once per lot and subscription ever (dedupe key ``lot:<id>``). Must run in a transaction."""
    payloads = [
        (
            {
                "user_id": lot["user_id"],
                "lot_id": str(lot["pk"]),
                "amount": lot["remaining"],
                "expires_at": _MOMENT.to_representation(lot["expires_at"]),
            },
            f"lot:{lot['pk']}",
        )
        for lot in lots
    ]
    return webhook_deliveries_enqueue_many(kind=Kind.POINTS_EXPIRING, payloads=payloads)
