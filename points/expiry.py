"""Points expiry (SPEC §13): each due lot's remainder leaves the balance in a ``points_expiry`` transaction.

What active holds still need is spared: a lot expires at most the account's available points, and
the spared rest expires at a later run once the holds settle. Each lot is expired under its
account's row lock, taken with SKIP LOCKED: parallel runs never wait for each other, and one that
finds an account busy leaves its lots to the next run. A lot is never expired twice: its
``expired_amount`` names the expiry transaction's idempotency key, and the remainder is re-read
under the lock.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .lots import lots_take
from .models import Account, Entry, Lot, SystemAccount, Transaction
from .services import (
    SYSTEM_SOURCE,
    LedgerResult,
    _apply_or_refuse,
    _claim,
    _counted,
    _post,
    request_hash,
    system_account_id,
)

logger = logging.getLogger(__name__)

Part = Entry.Part


@dataclass
class ExpiryRun:
    expired_lots: int = 0
    expired_points: int = 0
    skipped: int = 0  # lots that failed (logged) and are left for a later run


@_counted("points_expiry")
@transaction.atomic
def lot_expire(*, lot_id, now: datetime) -> LedgerResult | None:
    """Expire what is left of a lot due by ``now``, sparing what the account's active holds need.

    None when there is nothing to do: the lot is not due or not open, its remainder is all needed by
    holds, or its account is locked by someone else (another run, or an operation: a later run
    comes back to it).
    """
    account_id = Lot.objects.filter(pk=lot_id).values_list("account_id", flat=True).first()
    if account_id is None:
        return None
    account = (
        Account.objects.select_for_update(skip_locked=True)
        .filter(pk=account_id)
        .only("id", "user_id", "balance", "held")
        .first()
    )
    if account is None:
        return None
    lot = Lot.objects.filter(pk=lot_id, remaining__gt=0, expires_at__lte=now).first()
    if lot is None:
        return None
    amount = min(lot.remaining, account.balance - account.held)
    if amount <= 0:
        return None
    txn, replayed = _claim(
        source=SYSTEM_SOURCE, external_id=f"points_expiry:{lot.pk}:{lot.expired_amount}",
        fingerprint=request_hash("points_expiry", lot_id=str(lot.pk), expired_before=lot.expired_amount),
        kind=Transaction.Kind.POINTS_EXPIRY, account=account, amount=amount, reason="points expired",
        metadata={"lot_id": str(lot.pk), "expires_at": lot.expires_at.isoformat()},
    )  # fmt: skip
    if replayed:
        return None
    balance, held = _apply_or_refuse(account.pk, balance_delta=-amount, held_delta=0)
    lots_take(account_id=account.pk, amount=amount, txn=txn, record=False, first_lot_id=lot.pk, expiring=True)
    _post(
        txn,
        [(account.pk, Part.AVAILABLE, -amount), (system_account_id(SystemAccount.EXPIRED), Part.AVAILABLE, amount)],
        balance=balance,
        held=held,
    )
    return LedgerResult(txn, False)


def lots_expire_due(
    *, now: datetime | None = None, batch_size: int = 500, progress: Callable[[ExpiryRun], None] | None = None
) -> ExpiryRun:
    """Expire every lot due by ``now`` (default: the start of the run), once, in expiry order.

    One lot that cannot be processed is logged and skipped; the run goes on. ``progress`` is called
    after each batch with the totals so far.
    """
    now = now or timezone.now()
    run = ExpiryRun()
    after: tuple | None = None
    while True:
        due = Lot.objects.filter(remaining__gt=0, expires_at__lte=now)
        if after is not None:
            due = due.filter(Q(expires_at__gt=after[0]) | Q(expires_at=after[0], pk__gt=after[1]))
        batch = list(due.order_by("expires_at", "pk").values_list("expires_at", "pk")[:batch_size])
        if not batch:
            return run
        after = batch[-1]
        for _, lot_id in batch:
            try:
                result = lot_expire(lot_id=lot_id, now=now)
            except Exception:
                logger.exception("points expiry: lot %s could not be expired; left for a later run", lot_id)
                run.skipped += 1
                continue
            if result is not None:
                run.expired_lots += 1
                run.expired_points += result.transaction.amount
        if progress is not None:
            progress(run)
