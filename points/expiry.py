"""Points expiry (SPEC §13): each due lot's remainder leaves the balance in a ``points_expiry`` transaction.

What active holds still need is spared: a lot expires at most the account's available points, and
the spared rest expires at a later run once the holds settle. Due lots are expired a run at a time
(up to ``batch_size`` lots, one transaction, one statement per table) under their accounts' row
locks, taken with SKIP LOCKED: parallel runs never wait for each other, and one that finds an
account busy leaves its lots to the next run. A lot is never expired twice: its ``expired_amount``
names the expiry transaction's idempotency key, and the remainders are re-read under the locks.
"""

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from config.metrics import LEDGER_OPERATIONS

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
from .statements import ledger_sql

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
    *, now: datetime | None = None, batch_size: int = 1000, progress: Callable[[ExpiryRun], None] | None = None
) -> ExpiryRun:
    """Expire every lot due by ``now`` (default: the start of the run), once, in expiry order.

    The due lots are taken a run of ``batch_size`` at a time (``_lots_expire_run``: one transaction,
    one statement per table). A run the bulk statements cannot write (a constraint, a key stored
    meanwhile) is expired lot by lot instead (``lot_expire``), where one lot that cannot be
    processed is logged and skipped and the others go on. ``progress`` is called after each run
    with the totals so far.
    """
    now = now or timezone.now()
    run = ExpiryRun()
    after: tuple | None = None
    while True:
        due = Lot.objects.filter(remaining__gt=0, expires_at__lte=now)
        if after is not None:
            due = due.filter(Q(expires_at__gt=after[0]) | Q(expires_at=after[0], pk__gt=after[1]))
        batch = list(due.order_by("expires_at", "pk").values_list("expires_at", "pk", "account_id")[:batch_size])
        if not batch:
            return run
        after = batch[-1][:2]
        try:
            expired = _lots_expire_run([(lot_id, account_id) for _, lot_id, account_id in batch], now)
        except (_BulkRefused, DatabaseError):
            expired = None  # nothing of the run was written: lot by lot, each failure logged
        if expired is not None:
            run.expired_lots += len(expired)
            run.expired_points += sum(expired)
        else:
            for _, lot_id, _ in batch:
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


class _BulkRefused(Exception):
    """The bulk statements of a run could not write it as planned; nothing of the run was written."""


# Lock the accounts of a run of due lots, skipping those another run or an operation holds (their
# lots are left for a later run), in id order so that two runs never wait on each other in a cycle.
_LOCK_ACCOUNTS_SQL = """
    SELECT id, balance, held FROM {accounts} WHERE id = ANY(%s) ORDER BY id FOR UPDATE SKIP LOCKED
"""

# The run's lots as they are under their accounts' locks (a statement after the lock: a fresh snapshot).
_DUE_LOTS_SQL = """
    SELECT id, account_id, remaining, expired_amount, expires_at FROM {lots}
     WHERE id = ANY(%s) AND account_id = ANY(%s) AND remaining > 0 AND expires_at <= %s
     ORDER BY expires_at, id
"""

_EXPIRY_TRANSACTIONS_SQL = """
    INSERT INTO {transactions} (kind, source, id, external_id, request_hash, {account_column}, amount, reason,
                                metadata, balance_after, held_after, created_at)
    SELECT %s, %s, id, external_id, request_hash, account_id, amount, %s, CAST(metadata AS jsonb),
           balance_after, held_after, %s
      FROM unnest(CAST(%s AS uuid[]), CAST(%s AS text[]), CAST(%s AS text[]), CAST(%s AS bigint[]),
                  CAST(%s AS bigint[]), CAST(%s AS text[]), CAST(%s AS bigint[]), CAST(%s AS bigint[]))
           AS expiry (id, external_id, request_hash, account_id, amount, metadata, balance_after, held_after)
    ON CONFLICT (source, external_id) DO NOTHING
    RETURNING id
"""

_EXPIRY_ENTRIES_SQL = """
    INSERT INTO {entries} (transaction_id, account_id, part, amount)
    SELECT transaction_id, account_id, %s, amount
      FROM unnest(CAST(%s AS uuid[]), CAST(%s AS bigint[]), CAST(%s AS bigint[])) AS leg (transaction_id, account_id, amount)
"""

_EXPIRY_LOTS_SQL = """
    UPDATE {lots} AS lot
       SET remaining = lot.remaining - expired.amount, expired_amount = lot.expired_amount + expired.amount
      FROM unnest(CAST(%s AS uuid[]), CAST(%s AS bigint[])) AS expired (id, amount)
     WHERE lot.id = expired.id
"""

_EXPIRY_BALANCES_SQL = """
    UPDATE {accounts} AS account SET balance = account.balance - expired.amount
      FROM unnest(CAST(%s AS bigint[]), CAST(%s AS bigint[])) AS expired (id, amount)
     WHERE account.id = expired.id AND account.balance - expired.amount >= account.held
"""


@transaction.atomic
def _lots_expire_run(lots: list[tuple], now: datetime) -> list[int] | None:
    """Expire a run of due lots, given as (lot id, account id), in one transaction: the rows
    ``lot_expire`` would write for each, one statement per table. Returns the points expired per
    lot expired (lots of busy accounts, and lots whose points active holds need, are left out).
    None on a database other than PostgreSQL; _BulkRefused, with nothing written, when a row is
    refused or a key was stored meanwhile."""
    if connection.vendor != "postgresql":
        return None
    account_ids = sorted({account_id for _, account_id in lots})
    with connection.cursor() as cursor:
        cursor.execute(ledger_sql(_LOCK_ACCOUNTS_SQL, ()), [account_ids])
        accounts = {account_id: [balance, held] for account_id, balance, held in cursor.fetchall()}
        if not accounts:
            return []
        cursor.execute(ledger_sql(_DUE_LOTS_SQL, ()), [[lot_id for lot_id, _ in lots], list(accounts), now])
        rows = cursor.fetchall()
    expiries = []  # (lot id, account id, amount, key, fingerprint, metadata, balance after, held after)
    moved: dict[int, int] = {}
    for lot_id, account_id, remaining, expired_before, expires_at in rows:
        balance, held = accounts[account_id]
        amount = min(remaining, balance - held)  # what active holds need is spared
        if amount <= 0:
            continue
        accounts[account_id][0] = balance - amount
        moved[account_id] = moved.get(account_id, 0) + amount
        expiries.append(
            (
                lot_id, account_id, amount, f"points_expiry:{lot_id}:{expired_before}",
                request_hash("points_expiry", lot_id=str(lot_id), expired_before=expired_before),
                json.dumps({"lot_id": str(lot_id), "expires_at": expires_at.isoformat()}),
                balance - amount, held,
            )
        )  # fmt: skip
    if not expiries:
        return []
    ids = [uuid.uuid4() for _ in expiries]
    amounts = [row[2] for row in expiries]
    owners = [row[1] for row in expiries]
    expired_id = system_account_id(SystemAccount.EXPIRED)
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                ledger_sql(_EXPIRY_TRANSACTIONS_SQL, ()),
                [
                    Transaction.Kind.POINTS_EXPIRY, SYSTEM_SOURCE, "points expired", timezone.now(),
                    ids, [row[3] for row in expiries], [row[4] for row in expiries], owners, amounts,
                    [row[5] for row in expiries], [row[6] for row in expiries], [row[7] for row in expiries],
                ],
            )  # fmt: skip
            if len(cursor.fetchall()) < len(expiries):
                raise _BulkRefused
            cursor.execute(
                ledger_sql(_EXPIRY_ENTRIES_SQL, ()),
                [Part.AVAILABLE, ids + ids, owners + [expired_id] * len(ids), [-a for a in amounts] + amounts],
            )
            cursor.execute(ledger_sql(_EXPIRY_LOTS_SQL, ()), [[row[0] for row in expiries], amounts])
            if cursor.rowcount != len(expiries):
                raise _BulkRefused
            cursor.execute(ledger_sql(_EXPIRY_BALANCES_SQL, ()), [list(moved), list(moved.values())])
            if cursor.rowcount != len(moved):
                raise _BulkRefused
    except IntegrityError:
        raise _BulkRefused from None
    for _ in expiries:
        LEDGER_OPERATIONS.labels("points_expiry", "performed").inc()
    return amounts
