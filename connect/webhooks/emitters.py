"""What Connect reports by webhook, each called inside the transaction of what it reports."""

from ..models import RewardAction
from ..serializers import RewardActionOut
from .models import Kind
from .services import webhook_deliveries_enqueue_many

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
        payloads = [(RewardActionOut(action).data, None) for action in actions if action.status == status]
        written += webhook_deliveries_enqueue_many(kind=kind, payloads=payloads)
    return written
