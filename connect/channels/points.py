"""``points`` rewards: a credit in the Points ledger, in-process; a reversal action is a ledger reversal
of its original's credit (with ``allow_partial``: what the user no longer has is its ``shortfall``).

The ledger's idempotency key is ``(CONNECT_LEDGER_SOURCE, action id)``: a re-run after a crash gets
the original credit (or reversal) back instead of paying twice. Everything sent is derived from the
action row, so a re-run sends the same request (a changed request would be an idempotency conflict).
That is why a line's ``params.expires_in_days`` counts from the moment the action became deliverable,
stored on it (``created_at``, or ``released_at`` for an action that waited ``locked``), and not from
the clock of the attempt: the credit is posted right after that moment, its retries soon after.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import DatabaseError, IntegrityError

from config.api.errors import DomainError
from points.reversals import transaction_reverse
from points.services import MAX_AMOUNT, CreditIn, account_credit_many

from .base import ChannelError, PermanentChannelError, TransientChannelError

if TYPE_CHECKING:
    from connect.models import RewardAction


class PointsChannel:
    reward_type = "points"

    def configuration_error(self) -> str | None:
        return None

    def metadata(self, action: RewardAction) -> dict:
        event = action.event
        return {
            "reward_action_id": str(action.pk),
            "event_id": str(event.pk),
            "event_type": event.event_type,
            "source_service": event.source_service,
            "event_external_id": event.external_id,
            "rule": action.rule_code,
            "rule_version": action.rule_version,
        }

    def deliver_many(self, actions: list[RewardAction]) -> dict:
        """All the credits in one ledger transaction (``account_credit_many``)."""
        outcomes, credits = {}, []
        for action in actions:
            if not isinstance(action.amount, int) or not 1 <= action.amount <= MAX_AMOUNT:
                outcomes[action.pk] = PermanentChannelError(
                    f"A points reward must be 1..{MAX_AMOUNT} points, not {action.amount}."
                )
                continue
            try:
                expires_at = lot_expires_at(action)
            except PermanentChannelError as exc:
                outcomes[action.pk] = exc
                continue
            credits.append(
                CreditIn(
                    external_id=str(action.pk),
                    user_id=action.target_user_id,
                    amount=action.amount,
                    reason=f"reward:{action.rule_code}"[:200],
                    metadata=self.metadata(action),
                    expires_at=expires_at,
                )
            )
        if not credits:
            return outcomes
        try:
            posted = account_credit_many(source=settings.CONNECT_LEDGER_SOURCE, credits=credits)
        except DatabaseError as exc:
            error = TransientChannelError(f"The ledger is unavailable: {exc.__class__.__name__}: {exc}")
            posted = dict.fromkeys((credit.external_id for credit in credits), error)
        for action in actions:
            if action.pk not in outcomes:
                outcomes[action.pk] = _outcome(posted[str(action.pk)])
        return outcomes

    def reverse_many(self, actions: list[RewardAction]) -> dict:
        """Each reversal in its own ledger transaction (it locks the original credit, then the account)."""
        return {action.pk: self.reverse(action) for action in actions}

    def reverse(self, action: RewardAction) -> dict | ChannelError:
        try:
            reversed_ = transaction_reverse(
                source=settings.CONNECT_LEDGER_SOURCE,
                external_id=str(action.pk),
                original_external_id=str(action.reverses_id),
                amount=action.amount,
                reason=f"reversal:{action.rule_code}"[:200],
                metadata={**self.metadata(action), "reverses_action_id": str(action.reverses_id)},
                allow_partial=True,
            )
        except DatabaseError as exc:
            return TransientChannelError(f"The ledger is unavailable: {exc.__class__.__name__}: {exc}")
        except DomainError as exc:
            return PermanentChannelError(f"The ledger refused the reversal ({exc.code}): {exc.message}")
        outcome = _outcome(reversed_)
        outcome["shortfall"] = reversed_.transaction.shortfall
        outcome["reversed"] = reversed_.transaction.amount
        return outcome


def lot_expires_at(action: RewardAction) -> datetime | None:
    """When the credit's lot expires by the line's ``params.expires_in_days`` (None: the ledger's default)."""
    params = action.params if isinstance(action.params, dict) else {}
    days = params.get("expires_in_days")
    if days is None:
        return None
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 36500:
        raise PermanentChannelError("params.expires_in_days must be a whole number of days from 1 to 36500.")
    return (action.released_at or action.created_at) + timedelta(days=days)


def _outcome(posted) -> dict | ChannelError:
    if isinstance(posted, ChannelError):
        return posted
    if isinstance(posted, DomainError):
        return PermanentChannelError(f"The ledger refused the credit ({posted.code}): {posted.message}")
    if isinstance(posted, IntegrityError):
        return PermanentChannelError(f"The ledger refused the credit: {posted}")
    txn = posted.transaction
    return {
        "transaction_id": str(txn.pk),
        "balance": txn.balance_after,
        "held": txn.held_after,
        "available": txn.available_after,
        "replayed": posted.replayed,
    }
