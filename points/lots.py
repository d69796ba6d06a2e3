"""Lot bookkeeping (SPEC §13): which of a user's points came in when, and when they expire.

Every function here expects the caller to hold the account's row lock (its balance was moved by a
guarded UPDATE earlier in the same database transaction, or it was locked explicitly), so one
account's lots never change concurrently and the consumption order is the same for everyone.
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import F

from .models import Lot, LotUse, Transaction
from .statements import ledger_sql

# Soonest expiry first, never-expiring last, oldest first among equals.
OPEN_LOT_ORDER = (F("expires_at").asc(nulls_last=True), "created_at", "id")
# Most lots a debit takes from in practice; more are read only when these do not cover it.
_FIRST_READ = 16


class LotsDisagree(RuntimeError):
    """The account's open lots do not cover its balance: a broken invariant, never a refusal."""


def lot_expiry(*, posted_at: datetime, expires_at: datetime | None = None) -> datetime | None:
    """When a lot posted at ``posted_at`` expires: ``expires_at`` if given, else POINTS_EXPIRE_AFTER_DAYS
    later, or never (None) when that setting is 0."""
    if expires_at is not None:
        return expires_at
    days = settings.POINTS_EXPIRE_AFTER_DAYS
    return posted_at + timedelta(days=days) if days > 0 else None


def lot_open(*, txn: Transaction, account_id: int, amount: int, expires_at: datetime | None) -> Lot:
    """Open the lot of a credit, a positive adjustment or what a reversal gives back to no lot."""
    return Lot.objects.create(
        account_id=account_id,
        transaction_id=txn.pk,
        amount=amount,
        remaining=amount,
        expires_at=expires_at,
        created_at=txn.created_at,
    )


# Taking from an account's open lots in one statement: the lots in consumption order (the first lot
# given, if open, ahead of all), each one's running total, and from each lot the part of ``amount``
# its running total reaches; those lots updated and, when recorded, the LotUse rows inserted.
# At most ``amount`` lots are read besides the first (each holds at least one point), so a small
# take reads a few lots however many the account has; the index points_lot_open_order gives the order.
_TAKE_SQL = """
    WITH ordered AS (
        SELECT id, remaining, 0 AS rank, expires_at, created_at
          FROM {lots} WHERE id = %(first)s AND account_id = %(account)s AND remaining > 0
         UNION ALL
        (SELECT id, remaining, 1, expires_at, created_at
           FROM {lots}
          WHERE account_id = %(account)s AND remaining > 0 AND id IS DISTINCT FROM %(first)s
          ORDER BY expires_at, created_at, id
          LIMIT %(amount)s)
    ), running AS (
        SELECT id, remaining, CAST(SUM(remaining) OVER (ORDER BY rank, expires_at, created_at, id) AS bigint) AS upto
          FROM ordered
    ), takes AS (
        SELECT id, LEAST(remaining, %(amount)s - (upto - remaining)) AS take
          FROM running WHERE upto - remaining < %(amount)s
    ), taken AS (
        UPDATE {lots} AS lot
           SET remaining = lot.remaining - takes.take,
               expired_amount = lot.expired_amount + CASE WHEN %(expiring)s THEN takes.take ELSE 0 END
          FROM takes
         WHERE lot.id = takes.id
     RETURNING lot.id, takes.take
    ), used AS (
        INSERT INTO {uses} (transaction_id, lot_id, amount, returned)
        SELECT %(txn)s, id, take, 0 FROM taken WHERE %(record)s
    )
    SELECT id, take FROM taken
"""


def lots_take(
    *, account_id: int, amount: int, txn: Transaction, record: bool, first_lot_id=None, expiring: bool = False
) -> list[tuple]:
    """Take ``amount`` points from the account's open lots: from ``first_lot_id`` first (a credit
    reversal's own lot), then soonest expiry first. ``record`` keeps what was taken from each lot
    (LotUse), so a reversal of ``txn`` can give it back; ``expiring`` counts it as expired.

    One statement on PostgreSQL; returns the (lot id, points) taken. LotsDisagree when the lots do
    not cover ``amount`` (the caller's transaction must then roll back: the lots were changed).
    """
    if connection.vendor != "postgresql":
        return _lots_take_in_steps(
            account_id=account_id, amount=amount, txn=txn, record=record, first_lot_id=first_lot_id, expiring=expiring
        )
    with connection.cursor() as cursor:
        cursor.execute(
            ledger_sql(_TAKE_SQL),
            {
                "first": first_lot_id, "account": account_id, "amount": amount, "expiring": expiring,
                "txn": txn.pk, "record": record,
            },
        )  # fmt: skip
        takes = cursor.fetchall()
    if sum(take for _, take in takes) < amount:
        raise LotsDisagree(f"account {account_id}: open lots are short of a take of {amount}")
    return takes


def _open_lots(account_id: int, *, skip, limit: int | None) -> list[tuple]:
    lots = Lot.objects.filter(account_id=account_id, remaining__gt=0).exclude(pk__in=skip).order_by(*OPEN_LOT_ORDER)
    rows = lots.values_list("pk", "remaining")
    return list(rows[:limit] if limit else rows)


def _lots_take_in_steps(
    *, account_id: int, amount: int, txn: Transaction, record: bool, first_lot_id=None, expiring: bool = False
) -> list[tuple]:
    """``lots_take`` on a database without data-modifying CTEs (the embedded SQLite)."""
    takes: list[tuple] = []
    left = amount
    if first_lot_id is not None:
        own = Lot.objects.filter(pk=first_lot_id, account_id=account_id, remaining__gt=0).values_list("remaining")
        own_remaining = own.first()
        if own_remaining:
            take = min(own_remaining[0], left)
            takes.append((first_lot_id, take))
            left -= take
    for limit in (_FIRST_READ, None):
        if left <= 0:
            break
        skip = [lot_id for lot_id, _ in takes] + ([first_lot_id] if first_lot_id is not None else [])
        for lot_id, remaining in _open_lots(account_id, skip=skip, limit=limit):
            take = min(remaining, left)
            takes.append((lot_id, take))
            left -= take
            if left == 0:
                break
    if left > 0:
        raise LotsDisagree(f"account {account_id}: open lots are {left} points short of a take of {amount}")
    for lot_id, take in takes:
        changes = {"remaining": F("remaining") - take}
        if expiring:
            changes["expired_amount"] = F("expired_amount") + take
        Lot.objects.filter(pk=lot_id).update(**changes)
    if record:
        LotUse.objects.bulk_create(
            [LotUse(transaction_id=txn.pk, lot_id=lot_id, amount=take) for lot_id, take in takes]
        )
    return takes


def lots_give_back(*, account_id: int, original: Transaction, amount: int, txn: Transaction) -> None:
    """Give ``amount`` points of a reversed debit or capture back to the lots it took them from,
    the longest-lived first (what a partial reversal returns keeps the best expiry). Points it took
    from no recorded lot (a debit posted before lots existed) go to a new never-expiring lot."""
    left = amount
    uses = (
        LotUse.objects.filter(transaction_id=original.pk, returned__lt=F("amount"))
        .order_by(F("lot__expires_at").desc(nulls_first=True), "-lot__created_at", "-lot_id")
        .values_list("pk", "lot_id", "amount", "returned")
    )
    for use_id, lot_id, used, returned in uses:
        if left <= 0:
            break
        give = min(used - returned, left)
        LotUse.objects.filter(pk=use_id).update(returned=F("returned") + give)
        Lot.objects.filter(pk=lot_id).update(remaining=F("remaining") + give)
        left -= give
    if left > 0:
        lot_open(txn=txn, account_id=account_id, amount=left, expires_at=None)
