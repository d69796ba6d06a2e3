"""Ledger writes: credit, debit, hold, capture, release, adjustment and hold expiry.

Every operation runs in one database transaction and follows the same steps:
1. claim ``(source, external_id)`` by inserting the Transaction row (a unique constraint; a
   concurrent duplicate waits on the index, then replays or conflicts);
2. change the user's cached balance with one guarded ``UPDATE ... RETURNING`` — the guard keeps
   ``available`` from going below zero under any interleaving, without a read-then-write race;
3. write the balanced entries and stamp the balance after the operation on the Transaction.
A refusal raises, which rolls everything back, so it consumes neither points nor the external_id.

Lots (SPEC §13, ``points.lots``): a credit or positive adjustment opens a lot; a debit, a capture
or a negative adjustment takes from the open lots, soonest expiry first, and records what it took
(so its reversal can give it back). Lot rows change only under the account's row lock, which the
guarded balance UPDATE of step 2 takes, and every transaction that changes an account's lots also
updates its row.

A credit, the hot path, does all three steps and opens its lot in one PostgreSQL statement when the
account exists and the key is new (``_credit_in_one_statement``); so do a hold
(``_hold_in_one_statement``), the capture or release of an active hold of the calling client
(``_settle_in_one_statement``) and a debit (``_debit_in_one_statement``). A debit and a capture
take from the account's first open lots in the same statement, guarded by the account row's
version so that the lots they read are those under its lock (``_OPEN_LOTS_CTE``). Every other
case takes the same steps one by one, and so gives every replay and refusal. A batch of credits
(``account_credits_post``) writes the same rows for all of its new keys with one statement. A
connection prepares them once it has run them a few times (``DB_PREPARED_STATEMENTS``).
"""

import contextlib
import functools
import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models.signals import post_migrate
from django.dispatch import receiver
from django.utils import timezone

from config.api.errors import DomainError
from config.api.fields import storable_text_problem
from config.db import (
    column_values,
    insert_rows,
    insert_unless_conflict,
    json_rows,
    mark_saved,
    update_columns,
)
from config.metrics import LEDGER_OPERATIONS

from .errors import (
    CaptureExceedsHold,
    ExpiryInPast,
    HoldNotActive,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidRequest,
    NotFound,
)
from .lots import lot_expiry, lot_open, lots_take
from .models import Account, Entry, Hold, SystemAccount, Transaction
from .namespaces import STAFF_SOURCE, SYSTEM_SOURCE
from .selectors import transactions_by_key
from .statements import ledger_sql

MAX_AMOUNT = 10**12
MAX_HOLD_SECONDS = 30 * 24 * 3600

Kind = Transaction.Kind
logger = logging.getLogger("points.services")
Part = Entry.Part


@dataclass(frozen=True)
class LedgerResult:
    transaction: Transaction
    replayed: bool


# --- helpers ---------------------------------------------------------------------------------


def _counted(kind: str):
    """Count each call in rewards_ledger_operations_total{kind, outcome}: ``performed``,
    ``replayed``, the refusal's error code, ``validation_error`` for a ValueError, else ``error``.

    Only a count: the operation, its arguments and what it raises are untouched.
    """

    def decorate(operation):
        @functools.wraps(operation)
        def counted(*args, **kwargs):
            try:
                result = operation(*args, **kwargs)
            except DomainError as exc:
                LEDGER_OPERATIONS.labels(kind, exc.code).inc()
                raise
            except ValueError:
                LEDGER_OPERATIONS.labels(kind, "validation_error").inc()
                raise
            except Exception:
                LEDGER_OPERATIONS.labels(kind, "error").inc()
                raise
            if result is not None:
                LEDGER_OPERATIONS.labels(kind, "replayed" if result.replayed else "performed").inc()
            return result

        return counted

    return decorate


def request_hash(operation: str, **fields) -> str:
    """A stable fingerprint of a request, so a replay can be told from a conflicting reuse."""
    canonical = json.dumps({"op": operation, **fields}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_NOT_GIVEN = object()


def _operation_check(
    *,
    external_id,
    user_id=_NOT_GIVEN,
    amount=None,
    reason="",
    metadata=None,
    amount_required: bool = True,
    expires_in=None,
    expires_at=None,
) -> None:
    """Refuse input the ledger never stores, before anything is written.

    The API's serializers already refuse all of this with the same 400; the check is for in-process
    callers, so a bad amount is a clear refusal instead of a database error (or, for zero, a
    transaction without entries that only fails at commit).
    """
    problems: dict[str, list[str]] = {}
    if not isinstance(external_id, str) or not 1 <= len(external_id) <= 200:
        problems["external_id"] = ["A string of 1 to 200 characters is required."]
    if user_id is not _NOT_GIVEN and (not isinstance(user_id, str) or not 1 <= len(user_id) <= 100):
        problems["user_id"] = ["A string of 1 to 100 characters is required."]
    if amount is not None or amount_required:
        if not _is_int(amount) or not 1 <= amount <= MAX_AMOUNT:
            problems["amount"] = [f"An integer from 1 to {MAX_AMOUNT} is required."]
    if not isinstance(reason, str) or len(reason) > 200:
        problems["reason"] = ["A string of at most 200 characters is required."]
    if metadata is not None and not isinstance(metadata, dict):
        problems["metadata"] = ["A JSON object is required."]
    elif metadata:
        try:
            json.dumps(metadata, allow_nan=False)
        except (TypeError, ValueError):
            problems["metadata"] = ["Only JSON values are allowed (no NaN, infinity or other objects)."]
    texts = {"external_id": external_id, "reason": reason, "metadata": metadata}
    if user_id is not _NOT_GIVEN:
        texts["user_id"] = user_id
    for name, value in texts.items():
        problem = storable_text_problem(value)
        if problem and name not in problems:
            problems[name] = [problem]
    if expires_in is not None and (not _is_int(expires_in) or not 1 <= expires_in <= MAX_HOLD_SECONDS):
        problems["expires_in"] = [f"An integer from 1 to {MAX_HOLD_SECONDS} is required."]
    if expires_at is not None and (not isinstance(expires_at, datetime) or timezone.is_naive(expires_at)):
        problems["expires_at"] = ["A time zone aware moment is required."]
    if problems:
        raise InvalidRequest(details=problems)
    if expires_at is not None and expires_at <= timezone.now():
        raise ExpiryInPast(details={"expires_at": expires_at.isoformat()})


def _in_utc(moment: datetime | None) -> datetime | None:
    """An aware moment in UTC (PostgreSQL refuses some offsets Python allows); InvalidRequest if it cannot be."""
    if moment is None:
        return None
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise InvalidRequest(details={"expires_at": ["A moment within the calendar is required."]}) from None


_system_account_ids: dict[str, int] = {}


def system_account_id(code: str) -> int:
    account_id = _system_account_ids.get(code)
    if account_id is None:
        account, _ = Account.objects.get_or_create(code=code, defaults={"kind": Account.Kind.SYSTEM, "user_id": None})
        account_id = _system_account_ids[code] = account.pk
    return account_id


@receiver(post_migrate)
def _system_accounts_ensure(sender, **kwargs):
    """System accounts exist after every migrate or flush; forget ids cached before a flush."""
    if getattr(sender, "name", None) != "points":
        return
    _system_account_ids.clear()
    using = kwargs.get("using", "default")
    for code in SystemAccount.values:
        Account.objects.using(using).get_or_create(code=code, defaults={"kind": Account.Kind.SYSTEM})


def _user_account(user_id: str) -> Account:
    account, _ = Account.objects.get_or_create(user_id=user_id, defaults={"kind": Account.Kind.USER})
    return account


def _stored(fresh: Transaction) -> Transaction | None:
    """The Transaction stored under ``fresh``'s key, if any; IdempotencyConflict when its request differs."""
    existing = (
        Transaction.objects.select_related("account", "hold")
        .filter(source=fresh.source, external_id=fresh.external_id)
        .first()
    )
    if existing is not None and existing.request_hash != fresh.request_hash:
        raise IdempotencyConflict(details={"external_id": fresh.external_id})
    return existing


def _replay_of(fresh: Transaction) -> Transaction:
    """The stored Transaction whose key ``fresh`` just conflicted with (it is committed by now)."""
    existing = _stored(fresh)
    if existing is None:
        raise RuntimeError(f"idempotency key ({fresh.source}, {fresh.external_id}) conflicted but is not stored")
    return existing


def _claim(*, source: str, external_id: str, fingerprint: str, **fields) -> tuple[Transaction, bool]:
    """Insert the operation's Transaction, or return the one already stored under this key.

    Returns ``(transaction, replayed)``; raises IdempotencyConflict when the stored one differs.
    ``INSERT ... ON CONFLICT DO NOTHING`` waits for a concurrent insert of the same key and raises
    nothing, so no savepoint is needed around it.
    """
    txn = Transaction(source=source, external_id=external_id, request_hash=fingerprint, **fields)
    if insert_unless_conflict(txn, ("source", "external_id")):
        return txn, False
    return _replay_of(txn), True


_TRANSFER_CLAIM_SQL = """
    INSERT INTO {transactions} ({columns}, {account_column})
    SELECT {placeholders}, id FROM {accounts} WHERE user_id = %s
    ON CONFLICT (source, external_id) DO NOTHING
    RETURNING {account_column}
"""


def _transfer_claim(txn: Transaction, user_id: str) -> int | None:
    """Claim ``txn``'s key on the user's account in one statement (the account lookup included).

    Returns the account id, or None when nothing was inserted: the key is taken, or the user has
    no account yet.
    """
    columns, values = column_values(txn, exclude=("account",))
    with connection.cursor() as cursor:
        cursor.execute(ledger_sql(_TRANSFER_CLAIM_SQL, tuple(columns)), [*values, user_id])
        row = cursor.fetchone()
    return row[0] if row else None


_APPLY_SQL = """
    UPDATE {accounts}
       SET balance = balance + %s, held = held + %s
     WHERE id = %s AND held + %s >= 0 AND (balance + %s) - (held + %s) >= 0
 RETURNING balance, held
"""


def _account_apply(account_id: int, *, balance_delta: int, held_delta: int) -> tuple[int, int] | None:
    """Atomically move the cached totals; None when that would leave available or held below zero."""
    with connection.cursor() as cursor:
        cursor.execute(
            ledger_sql(_APPLY_SQL, ()), [balance_delta, held_delta, account_id, held_delta, balance_delta, held_delta]
        )
        row = cursor.fetchone()
    return (row[0], row[1]) if row else None


def _post(txn: Transaction, legs: list[tuple[int, str, int]], *, balance: int, held: int, hold=None):
    """Write the entries (account id, part, amount) and stamp the balance after the operation."""
    assert sum(amount for _, _, amount in legs) == 0, "unbalanced transaction"
    insert_rows(
        [
            Entry(transaction_id=txn.pk, account_id=account_id, part=part, amount=amount)
            for account_id, part, amount in legs
            if amount
        ]
    )
    txn.balance_after, txn.held_after = balance, held
    stamped = ["balance_after", "held_after"]
    if hold is not None:
        txn.hold = hold
        stamped.append("hold")
    update_columns(txn, stamped)


def _apply_or_refuse(account_id: int, *, balance_delta: int, held_delta: int) -> tuple[int, int]:
    totals = _account_apply(account_id, balance_delta=balance_delta, held_delta=held_delta)
    if totals is None:
        current = Account.objects.filter(pk=account_id).values("balance", "held").first() or {
            "balance": 0,
            "held": 0,
        }
        raise InsufficientFunds(
            details={
                "available": current["balance"] - current["held"],
                "requested": abs(balance_delta - held_delta) if held_delta else -balance_delta,
            }
        )
    return totals


# --- operations ------------------------------------------------------------------------------


# The Transaction and its two entries of a one-statement credit or debit: the account's leg and the
# counterpart's (``acct`` is the account as updated).
_TRANSFER_CTES = """    ), txn AS (
        INSERT INTO {transactions} ({columns}, {account_column}, balance_after, held_after)
        SELECT {placeholders}, id, balance, held FROM acct
        RETURNING id, {account_column}
    ), legs AS (
        INSERT INTO {entries} (transaction_id, account_id, part, amount)
        SELECT id, {account_column}, %s, CAST(%s AS bigint) FROM txn
         UNION ALL
        SELECT id, CAST(%s AS bigint), %s, CAST(%s AS bigint) FROM txn
"""

# The entries of a one-statement capture or release (``_settle_legs``), none of zero.
_SETTLE_LEGS_CTE = """    ), legs AS (
        INSERT INTO {entries} (transaction_id, account_id, part, amount)
        SELECT txn.id, leg.account_id, leg.part, leg.amount
          FROM txn, acct,
               LATERAL (VALUES (acct.id, %s, -acct.hold_amount),
                               (CAST(%s AS bigint), %s, acct.captured),
                               (acct.id, %s, acct.released)) AS leg (account_id, part, amount)
         WHERE leg.amount <> 0
"""


_CREDIT_SQL = (
    """
    WITH acct AS (
        UPDATE {accounts} SET balance = balance + %s
         WHERE user_id = %s
           AND NOT EXISTS (SELECT 1 FROM {transactions} WHERE source = %s AND external_id = %s)
     RETURNING id, balance, held
"""
    + _TRANSFER_CTES
    + """    ), lot AS (
        INSERT INTO {lots} (id, account_id, transaction_id, amount, remaining, expired_amount, expires_at, created_at)
        SELECT %s, {account_column}, id, CAST(%s AS bigint), CAST(%s AS bigint), 0, %s, %s FROM txn
    )
    SELECT id, balance, held FROM acct
"""
)


def _credit_in_one_statement(txn: Transaction, user_id: str, counterpart_id: int, expires_at) -> bool:
    """The common case of a credit as one PostgreSQL statement: move the balance, insert the
    Transaction with the balance after it, its two entries and its lot; in autocommit mode that is
    one round trip and one commit.

    True when it was performed. False, with nothing changed, in every other case, which the
    stepwise path then sorts out: the key is taken (a replay or a conflict) or the user has no
    account yet. Two requests with one key at the same time cannot both pass: the second one's
    INSERT hits the unique key, which aborts its whole statement.
    """
    columns, values = column_values(txn, exclude=("account", "balance_after", "held_after"))
    sql = ledger_sql(_CREDIT_SQL, tuple(columns))
    amount = txn.amount
    params = [
        amount, user_id, txn.source, txn.external_id,
        *values,
        Part.AVAILABLE, amount,
        counterpart_id, Part.AVAILABLE, -amount,
        uuid.uuid4(), amount, amount, expires_at, txn.created_at,
    ]  # fmt: skip
    row = _one_statement_row(sql, params)
    if row is None:
        return False
    account_id, balance, held = row
    _one_statement_saved(txn, _account_as_left(account_id, user_id, balance, held))
    return True


# Taking from lots inside a one-statement operation (``_DEBIT_SQL``, ``_CAPTURE_SQL``). ``cur`` is the
# account as the statement's snapshot sees it: its id and its row version (xmin). The operation's
# account UPDATE only goes ahead while the row is still that version, so the lots read from the same
# snapshot are the lots as they are under the row lock: every change to an account's lots is made by a
# transaction that also updates the account's row (its balance). When the row changed in between (a
# concurrent operation committed), nothing is written and the stepwise path decides. ``open`` is the
# first of the account's open lots in consumption order (soonest expiry first, then oldest) with their
# running totals; a take that they do not cover goes the stepwise way as well.
_OPEN_LOTS_CTE = """
    open AS (
        SELECT id, remaining,
               CAST(SUM(remaining) OVER (ORDER BY expires_at, created_at, id) AS bigint) AS upto
          FROM (SELECT id, remaining, expires_at, created_at FROM {lots}
                 WHERE account_id = (SELECT id FROM cur) AND remaining > 0
                 ORDER BY expires_at, created_at, id
                 LIMIT 16) AS first_lots
    )
"""

_DEBIT_SQL = (
    """
    WITH cur AS (
        SELECT id, xmin FROM {accounts} WHERE user_id = %s
    ), """
    + _OPEN_LOTS_CTE
    + """, acct AS (
        UPDATE {accounts} SET balance = balance - %s
         WHERE id = (SELECT id FROM cur) AND xmin = (SELECT xmin FROM cur)
           AND (balance - %s) - held >= 0
           AND (SELECT max(upto) FROM open) >= %s
           AND NOT EXISTS (SELECT 1 FROM {transactions} WHERE source = %s AND external_id = %s)
     RETURNING id, balance, held
    ), takes AS (
        SELECT open.id, LEAST(open.remaining, %s - (open.upto - open.remaining)) AS take
          FROM open
         WHERE open.upto - open.remaining < %s AND EXISTS (SELECT 1 FROM acct)
    ), taken AS (
        UPDATE {lots} AS lot SET remaining = lot.remaining - takes.take
          FROM takes
         WHERE lot.id = takes.id
     RETURNING lot.id, takes.take
"""
    + _TRANSFER_CTES
    + """    ), used AS (
        INSERT INTO {uses} (transaction_id, lot_id, amount, returned)
        SELECT txn.id, taken.id, taken.take, 0 FROM txn, taken
    )
    SELECT id, balance, held FROM acct
"""
)


def _debit_in_one_statement(txn: Transaction, user_id: str, counterpart_id: int) -> bool:
    """The common case of a debit as one PostgreSQL statement: move the balance, take from the
    account's open lots soonest expiry first (recording what it took from each), insert the
    Transaction with the balance after it and its two entries. False, with nothing changed, when
    the key is taken, the user has no account, the funds do not suffice, the first open lots do not
    cover the amount or the account changed since the statement began: the stepwise path then
    decides (a replay, a refusal, or the same debit in steps)."""
    columns, values = column_values(txn, exclude=("account", "balance_after", "held_after"))
    amount = txn.amount
    params = [
        user_id,
        amount, amount, amount, txn.source, txn.external_id,
        amount, amount,
        *values,
        Part.AVAILABLE, -amount,
        counterpart_id, Part.AVAILABLE, amount,
    ]  # fmt: skip
    row = _one_statement_row(ledger_sql(_DEBIT_SQL, tuple(columns)), params)
    if row is None:
        return False
    account_id, balance, held = row
    _one_statement_saved(txn, _account_as_left(account_id, user_id, balance, held))
    return True


def _one_statement_row(sql: str, params: list):
    """The row a one-statement operation returns, or None when it did nothing or was refused
    by a constraint (a key taken concurrently, a balance check): the stepwise path then decides."""
    try:
        # Alone, the statement is its own transaction; inside a caller's transaction it gets a
        # savepoint, so an abort does not take the caller's work with it.
        with transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext():
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchone()
    except IntegrityError:
        return None


def _account_as_left(account_id: int, user_id: str, balance: int, held: int) -> Account:
    """The user's account as an operation left it, without reading it back (other fields load on access)."""
    return Account.from_db(
        connection.alias,
        ["id", "kind", "user_id", "balance", "held"],
        [account_id, Account.Kind.USER, user_id, balance, held],
    )


def _one_statement_saved(txn: Transaction, account: Account, hold: Hold | None = None) -> None:
    mark_saved(txn)
    txn.account, txn.balance_after, txn.held_after = account, account.balance, account.held
    if hold is not None:
        mark_saved(hold)
        txn.hold = hold


@transaction.atomic
def _transfer_in_steps(
    txn: Transaction, user_id: str, delta: int, counterpart_id: int, expires_at=None
) -> LedgerResult:
    """Claim the key (with the account lookup), move the balance, open the credit's lot or take the
    debit from the lots, write the entries, stamp the balance."""
    account_id = _transfer_claim(txn, user_id)
    if account_id is None:
        # The key is taken, or this is the user's first operation: tell which, then claim again.
        existing = _stored(txn)
        if existing is not None:
            return LedgerResult(existing, True)
        _user_account(user_id)
        account_id = _transfer_claim(txn, user_id)
        if account_id is None:  # a concurrent request with this key won
            return LedgerResult(_replay_of(txn), True)
    mark_saved(txn)
    txn.account_id = account_id
    balance, held = _apply_or_refuse(account_id, balance_delta=delta, held_delta=0)
    if delta > 0:
        lot_open(txn=txn, account_id=account_id, amount=delta, expires_at=expires_at)
    else:
        lots_take(account_id=account_id, amount=-delta, txn=txn, record=True)
    _post(
        txn, [(account_id, Part.AVAILABLE, delta), (counterpart_id, Part.AVAILABLE, -delta)], balance=balance, held=held
    )
    return LedgerResult(txn, False)


def _transfer(
    *,
    kind: str,
    counterpart: str,
    sign: int,
    source: str,
    external_id: str,
    user_id: str,
    amount: int,
    reason: str,
    metadata: dict | None,
    expires_at: datetime | None = None,
) -> LedgerResult:
    """Move ``amount`` into (sign +1) or out of (sign -1) the user's available points, against a system account."""
    _operation_check(
        external_id=external_id, user_id=user_id, amount=amount, reason=reason, metadata=metadata, expires_at=expires_at
    )
    expires_at = _in_utc(expires_at)
    delta = sign * amount
    metadata = metadata or {}
    # expires_at joins the fingerprint only when given, so credits posted before it existed replay as before.
    extra = {} if expires_at is None else {"expires_at": expires_at.isoformat()}
    txn = Transaction(
        kind=kind, source=source, external_id=external_id, amount=amount, reason=reason, metadata=metadata,
        request_hash=request_hash(kind, user_id=user_id, amount=amount, reason=reason, metadata=metadata, **extra),
    )  # fmt: skip
    counterpart_id = system_account_id(counterpart)
    if delta < 0:
        if connection.vendor == "postgresql" and _debit_in_one_statement(txn, user_id, counterpart_id):
            return LedgerResult(txn, False)
        return _transfer_in_steps(txn, user_id, delta, counterpart_id)
    lot_expires_at = lot_expiry(posted_at=txn.created_at, expires_at=expires_at)
    if connection.vendor == "postgresql" and _credit_in_one_statement(txn, user_id, counterpart_id, lot_expires_at):
        return LedgerResult(txn, False)
    return _transfer_in_steps(txn, user_id, delta, counterpart_id, lot_expires_at)


@_counted("credit")
def account_credit(
    *,
    source: str,
    external_id: str,
    user_id: str,
    amount: int,
    reason: str = "",
    metadata: dict | None = None,
    expires_at: datetime | None = None,
) -> LedgerResult:
    """Credit ``amount`` to the user in a new lot that expires at ``expires_at`` (aware, in the
    future; default: POINTS_EXPIRE_AFTER_DAYS after posting, 0 = never); atomic, whether it runs
    alone or inside the caller's transaction."""
    return _transfer(
        kind=Kind.CREDIT, counterpart=SystemAccount.ISSUED, sign=1, source=source, external_id=external_id,
        user_id=user_id, amount=amount, reason=reason, metadata=metadata, expires_at=expires_at,
    )  # fmt: skip


@dataclass(frozen=True)
class CreditIn:
    """One credit of a batch: ``account_credit``'s arguments but the source."""

    external_id: str
    user_id: str
    amount: int
    reason: str = ""
    metadata: dict | None = None
    expires_at: datetime | None = None


CreditOutcome = LedgerResult | DomainError


def account_credit_many(
    *, source: str, credits: Sequence[CreditIn]
) -> dict[str, LedgerResult | DomainError | IntegrityError]:
    """Post ``credits`` in one ledger transaction; each one's outcome by its ``external_id``.

    Each credit is exactly ``account_credit`` (``account_credits_post``), so it is idempotent on
    ``(source, external_id)``: a refused credit (its DomainError, or the IntegrityError of a
    constraint, is its outcome) leaves the others posted. A database error of the transaction
    itself (an outage) propagates and posts nothing. Must not be called inside a caller's transaction.
    """
    with transaction.atomic():
        posted = _credits_post(source=source, credits=credits, refusals=(DomainError, IntegrityError))
    return {credit.external_id: outcome for credit, outcome in zip(credits, posted, strict=True)}


@transaction.atomic
def account_credits_post(
    *, source: str, credits: Sequence[CreditIn], refusals: tuple[type[Exception], ...] = (DomainError,)
) -> list[CreditOutcome]:
    """Post ``credits`` in order, each exactly as ``account_credit`` alone would; one outcome each,
    in order: its LedgerResult, or the exception (one of ``refusals``) that refused it.

    The batch ledger service of dispatch and of ``POST /internal/batch``. Credits whose keys are
    new are posted together (``_credits_in_bulk``): their accounts locked in the order of their
    user ids, then one statement that inserts their Transactions, entries and lots and moves the
    balances, so a batch costs a few statements rather than a few per credit, and two batches
    over the same accounts wait for each other instead of deadlocking. A key already stored
    replays or conflicts as alone; a repeated key in the batch is, after its first valid use, a
    replay or conflict of it. A refusal changes nothing, and the others stay posted (atomic
    inside the caller's transaction). Any other error propagates.
    """
    return _credits_post(source=source, credits=credits, refusals=refusals)


def _credits_post(
    *, source: str, credits: Sequence[CreditIn], refusals: tuple[type[Exception], ...]
) -> list[CreditOutcome]:
    """``account_credits_post`` inside a transaction the caller holds (no savepoint of its own)."""
    outcomes: list[CreditOutcome | None] = [None] * len(credits)
    fresh: dict[str, tuple[int, Transaction, str, datetime | None]] = {}  # by key: the first valid use
    repeats: list[int] = []
    for index, credit in enumerate(credits):
        try:
            txn, expires_at = _credit_prepared(source, credit)
        except DomainError as exc:
            _credit_counted(exc)
            outcomes[index] = exc
            continue
        if txn.external_id in fresh:
            repeats.append(index)
        else:
            fresh[txn.external_id] = (index, txn, credit.user_id, expires_at)
    if fresh:
        for existing in transactions_by_key(source, list(fresh)):
            index, txn, _, _ = fresh.pop(existing.external_id)
            if existing.request_hash == txn.request_hash:
                outcomes[index] = _credit_counted(LedgerResult(existing, True))
            else:
                outcomes[index] = _credit_counted(IdempotencyConflict(details={"external_id": txn.external_id}))
    alone = list(fresh.values())
    if len(alone) > 1 and connection.vendor == "postgresql":
        posted = _credits_in_bulk(alone)
        if posted:
            for index, txn, _, _ in alone:
                outcomes[index] = _credit_counted(LedgerResult(txn, False))
            alone = []
    # A lone credit, a batch the bulk statements could not post as planned (a key taken concurrently,
    # a constraint), and the repeats: each through ``account_credit`` itself, in batch order.
    for index in sorted([index for index, *_ in alone] + repeats):
        credit = credits[index]
        try:
            outcomes[index] = account_credit(
                source=source, external_id=credit.external_id, user_id=credit.user_id, amount=credit.amount,
                reason=credit.reason, metadata=credit.metadata, expires_at=credit.expires_at,
            )  # fmt: skip
        except refusals as exc:
            outcomes[index] = exc
    return outcomes


def _credit_counted(outcome):
    """Count a credit the batch decided without ``account_credit``, as ``_counted`` would."""
    if isinstance(outcome, DomainError):
        LEDGER_OPERATIONS.labels("credit", outcome.code).inc()
    else:
        LEDGER_OPERATIONS.labels("credit", "replayed" if outcome.replayed else "performed").inc()
    return outcome


def _credit_prepared(source: str, credit: CreditIn) -> tuple[Transaction, datetime | None]:
    """The checks and the Transaction (not saved) of ``account_credit``, and the expiry of its lot."""
    external_id, user_id, amount, reason, metadata = (
        credit.external_id, credit.user_id, credit.amount, credit.reason, credit.metadata,
    )  # fmt: skip
    _operation_check(
        external_id=external_id, user_id=user_id, amount=amount, reason=reason, metadata=metadata,
        expires_at=credit.expires_at,
    )  # fmt: skip
    expires_at = _in_utc(credit.expires_at)
    metadata = metadata or {}
    extra = {} if expires_at is None else {"expires_at": expires_at.isoformat()}
    txn = Transaction(
        kind=Kind.CREDIT, source=source, external_id=external_id, amount=amount, reason=reason, metadata=metadata,
        request_hash=request_hash(Kind.CREDIT, user_id=user_id, amount=amount, reason=reason, metadata=metadata, **extra),
    )  # fmt: skip
    return txn, lot_expiry(posted_at=txn.created_at, expires_at=expires_at)


_LOCK_ACCOUNTS_SQL = """
    SELECT id, user_id, balance, held FROM {accounts}
     WHERE user_id = ANY(%s) ORDER BY user_id FOR UPDATE
"""

# A run of credits in one statement: the rows are one JSON document read by ``jsonb_to_recordset`` (so
# the text is the same whatever the number of credits, and the json module encodes them where an array
# per column makes the driver quote and escape every element); each Transaction inserted brings its two
# entries and its lot, and the accounts' balances move by what was inserted. Columns not named take their
# defaults (no hold, no creator, nothing reversed). It returns how many Transactions it inserted: fewer
# than the credits when a key was taken meanwhile.
_BULK_CREDITS_SQL = """
    WITH credit AS (
        SELECT * FROM jsonb_to_recordset(CAST(%s AS jsonb))
            AS credit (id uuid, external_id text, request_hash text, account_id bigint, amount bigint,
                       reason text, metadata jsonb, balance_after bigint, held_after bigint,
                       created_at timestamptz, expires_at timestamptz)
    ), txn AS (
        INSERT INTO {transactions} (kind, source, id, external_id, request_hash, {account_column}, amount, reason,
                                    metadata, balance_after, held_after, created_at)
        SELECT %s, %s, id, external_id, request_hash, account_id, amount, reason, metadata,
               balance_after, held_after, created_at
          FROM credit
        ON CONFLICT (source, external_id) DO NOTHING
        RETURNING id, {account_column} AS account_id, amount, created_at
    ), legs AS (
        INSERT INTO {entries} (transaction_id, account_id, part, amount)
        SELECT id, account_id, %s, amount FROM txn
         UNION ALL
        SELECT id, CAST(%s AS bigint), %s, -amount FROM txn
    ), lots AS (
        INSERT INTO {lots} (id, account_id, transaction_id, amount, remaining, expired_amount, expires_at, created_at)
        SELECT gen_random_uuid(), txn.account_id, txn.id, txn.amount, txn.amount, 0, credit.expires_at, txn.created_at
          FROM txn JOIN credit ON credit.id = txn.id
    ), balances AS (
        UPDATE {accounts} AS account SET balance = account.balance + moved.amount
          FROM (SELECT account_id, CAST(SUM(amount) AS bigint) AS amount FROM txn GROUP BY account_id) AS moved
         WHERE account.id = moved.account_id
    )
    SELECT COUNT(*) FROM txn
"""


def _credits_in_bulk(credits: list[tuple[int, Transaction, str, datetime | None]]) -> bool:
    """Post credits with new keys, given as (index, unsaved Transaction, user id, lot expiry), in order.

    Creates the accounts that do not exist, locks all of them in user id order (the lock also keeps
    the balances read here current), works out each credit's balance after it in order, then
    inserts the Transactions, their entries and their lots, and moves the balances: the rows
    ``account_credit`` would write, in one statement (``_BULK_CREDITS_SQL``). True when all were
    posted. False with nothing posted (the accounts stay created and locked) when a key was taken
    meanwhile or a constraint refused a row; the caller then posts them one by one.
    """
    user_ids = sorted({user_id for _, _, user_id, _ in credits})
    accounts = _accounts_locked(user_ids)
    if len(accounts) < len(user_ids):
        Account.objects.bulk_create(
            [Account(user_id=user_id, kind=Account.Kind.USER) for user_id in user_ids if user_id not in accounts],
            ignore_conflicts=True,
        )
        accounts = _accounts_locked(user_ids)
    totals = {user_id: [account_id, balance, held] for user_id, (account_id, balance, held) in accounts.items()}
    rows = []  # (transaction, account id, lot expiry), in order
    for _, txn, user_id, expires_at in credits:
        account_id, balance, held = totals[user_id]
        balance += txn.amount
        totals[user_id][1] = balance
        txn.account = _account_as_left(account_id, user_id, balance, held)
        txn.balance_after, txn.held_after = balance, held
        rows.append((txn, account_id, expires_at))
    transactions = [txn for txn, _, _ in rows]
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                ledger_sql(_BULK_CREDITS_SQL, ()),
                [
                    json_rows([
                        {
                            "id": txn.pk, "external_id": txn.external_id, "request_hash": txn.request_hash,
                            "account_id": account_id, "amount": txn.amount, "reason": txn.reason,
                            "metadata": txn.metadata, "balance_after": txn.balance_after,
                            "held_after": txn.held_after, "created_at": txn.created_at, "expires_at": expires_at,
                        }
                        for txn, account_id, expires_at in rows
                    ]),
                    Kind.CREDIT, transactions[0].source,
                    Part.AVAILABLE, system_account_id(SystemAccount.ISSUED), Part.AVAILABLE,
                ],
            )  # fmt: skip
            if cursor.fetchone()[0] < len(transactions):
                raise _KeyTaken
    except (_KeyTaken, IntegrityError):
        return False
    for txn in transactions:
        mark_saved(txn)
    return True


class _KeyTaken(Exception):
    """A key of a bulk credit was stored by a concurrent request after it was looked up."""


def _accounts_locked(user_ids: list[str]) -> dict[str, tuple[int, int, int]]:
    """Lock the users' accounts in user id order; (id, balance, held) by user id of those that exist."""
    with connection.cursor() as cursor:
        cursor.execute(ledger_sql(_LOCK_ACCOUNTS_SQL, ()), [user_ids])
        return {user_id: (account_id, balance, held) for account_id, user_id, balance, held in cursor.fetchall()}


@_counted("debit")
def account_debit(
    *, source: str, external_id: str, user_id: str, amount: int, reason: str = "", metadata: dict | None = None
) -> LedgerResult:
    """Refused with InsufficientFunds when the user's available points do not cover ``amount``."""
    return _transfer(
        kind=Kind.DEBIT, counterpart=SystemAccount.SPENT, sign=-1, source=source, external_id=external_id,
        user_id=user_id, amount=amount, reason=reason, metadata=metadata,
    )  # fmt: skip


@_counted("hold")
def hold_create(
    *,
    source: str,
    external_id: str,
    user_id: str,
    amount: int,
    reason: str = "",
    metadata: dict | None = None,
    expires_in: int | None = None,
) -> LedgerResult:
    """Reserve ``amount`` of the user's available points until captured, released or expired."""
    _operation_check(
        external_id=external_id, user_id=user_id, amount=amount, reason=reason, metadata=metadata, expires_in=expires_in
    )
    metadata = metadata or {}
    fingerprint = request_hash(
        "hold", user_id=user_id, amount=amount, reason=reason, metadata=metadata, expires_in=expires_in
    )
    seconds = expires_in if expires_in is not None else settings.POINTS_DEFAULT_HOLD_SECONDS
    fields = {"kind": Kind.HOLD, "amount": amount, "reason": reason, "metadata": metadata}
    if connection.vendor == "postgresql":
        now = timezone.now()
        hold = Hold(source=source, amount=amount, expires_at=now + timedelta(seconds=seconds), created_at=now)
        txn = Transaction(
            source=source, external_id=external_id, request_hash=fingerprint, hold_id=hold.pk, created_at=now, **fields
        )
        if _hold_in_one_statement(txn, hold, user_id):
            return LedgerResult(txn, False)
    return _hold_in_steps(source, external_id, user_id, fingerprint, seconds, fields)


_HOLD_SQL = """
    WITH acct AS (
        UPDATE {accounts} SET held = held + %s
         WHERE user_id = %s AND balance - (held + %s) >= 0
           AND NOT EXISTS (SELECT 1 FROM {transactions} WHERE source = %s AND external_id = %s)
     RETURNING id, balance, held
    ), placed AS (
        INSERT INTO {holds} ({hold_columns}, {hold_account_column})
        SELECT {hold_placeholders}, id FROM acct
    ), txn AS (
        INSERT INTO {transactions} ({columns}, {account_column}, balance_after, held_after)
        SELECT {placeholders}, id, balance, held FROM acct
        RETURNING id, {account_column}
    ), legs AS (
        INSERT INTO {entries} (transaction_id, account_id, part, amount)
        SELECT id, {account_column}, %s, CAST(%s AS bigint) FROM txn
         UNION ALL
        SELECT id, {account_column}, %s, CAST(%s AS bigint) FROM txn
    )
    SELECT id, balance, held FROM acct
"""


def _hold_in_one_statement(txn: Transaction, hold: Hold, user_id: str) -> bool:
    """The common case of a hold as one PostgreSQL statement: move the amount to held, insert the
    Hold, the Transaction with the balance after it and its two entries. False, with nothing
    changed, when the key is taken, the user has no account or the funds do not suffice: the
    stepwise path then sorts it out (as for ``_transfer_in_one_statement``)."""
    columns, values = column_values(txn, exclude=("account", "balance_after", "held_after"))
    hold_columns, hold_values = column_values(hold, exclude=("account",))
    amount = hold.amount
    params = [
        amount, user_id, amount, txn.source, txn.external_id,
        *hold_values,
        *values,
        Part.AVAILABLE, -amount,
        Part.HELD, amount,
    ]  # fmt: skip
    row = _one_statement_row(ledger_sql(_HOLD_SQL, tuple(columns), tuple(hold_columns)), params)
    if row is None:
        return False
    account_id, balance, held = row
    account = _account_as_left(account_id, user_id, balance, held)
    hold.account = account
    _one_statement_saved(txn, account, hold)
    return True


@transaction.atomic
def _hold_in_steps(source: str, external_id: str, user_id: str, fingerprint: str, seconds: int, fields) -> LedgerResult:
    account = _user_account(user_id)
    txn, replayed = _claim(source=source, external_id=external_id, fingerprint=fingerprint, account=account, **fields)
    if replayed:
        return LedgerResult(txn, True)
    balance, held = _apply_or_refuse(account.pk, balance_delta=0, held_delta=fields["amount"])
    hold = Hold.objects.create(
        account=account,
        source=source,
        amount=fields["amount"],
        expires_at=txn.created_at + timedelta(seconds=seconds),
        created_at=txn.created_at,
    )
    _post(
        txn,
        [(account.pk, Part.AVAILABLE, -hold.amount), (account.pk, Part.HELD, hold.amount)],
        balance=balance,
        held=held,
        hold=hold,
    )
    return LedgerResult(txn, False)


def _hold_for(source: str, hold_id) -> Hold:
    """A hold is settled only by the client that placed it; anyone else is told it does not exist."""
    try:
        hold_uuid = uuid.UUID(str(hold_id))
    except ValueError:
        raise NotFound("No such hold.", details={"hold_id": str(hold_id)}) from None
    hold = Hold.objects.select_related("account").filter(pk=hold_uuid, source=source).first()
    if hold is None:
        raise NotFound("No such hold.", details={"hold_id": str(hold_id)})
    return hold


def _hold_close(hold: Hold, *, status: str, captured: int, now) -> None:
    """Move an active, unexpired hold to its final status; HoldNotActive if someone got there first."""
    closed = Hold.objects.filter(pk=hold.pk, status=Hold.Status.ACTIVE, expires_at__gt=now).update(
        status=status, captured_amount=captured, released_amount=hold.amount - captured, closed_at=now
    )
    if not closed:
        raise HoldNotActive(details={"hold_id": str(hold.pk)})
    hold.status, hold.captured_amount, hold.released_amount, hold.closed_at = (
        status, captured, hold.amount - captured, now,
    )  # fmt: skip


def _settle_legs(hold: Hold, captured: int) -> list[tuple[int, str, int]]:
    account_id = hold.account_id
    return [
        (account_id, Part.HELD, -hold.amount),
        (system_account_id(SystemAccount.SPENT), Part.AVAILABLE, captured),
        (account_id, Part.AVAILABLE, hold.amount - captured),
    ]


@_counted("capture")
def hold_capture(*, source: str, external_id: str, hold_id, amount: int | None = None) -> LedgerResult:
    """Spend ``amount`` (default: all) of an active hold; the rest returns to available."""
    _operation_check(external_id=external_id, amount=amount, amount_required=False)
    settled = _settled_in_one_statement(source, external_id, hold_id, kind=Kind.CAPTURE, amount=amount)
    if settled is not None:
        return settled
    return _capture_in_steps(source=source, external_id=external_id, hold_id=hold_id, amount=amount)


def _settled_in_one_statement(
    source: str, external_id: str, hold_id, *, kind: str, amount: int | None
) -> LedgerResult | None:
    """A capture (of ``amount``, None: all) or a release of a hold in one statement when it can be;
    None when the stepwise path must decide."""
    if connection.vendor != "postgresql":
        return None
    try:
        hold_uuid = uuid.UUID(str(hold_id))
    except ValueError:
        return None  # the stepwise path answers NotFound
    fingerprint = _settle_fingerprint(kind, hold_uuid, amount)
    txn = Transaction(source=source, external_id=external_id, kind=kind, hold_id=hold_uuid, request_hash=fingerprint)
    if _settle_in_one_statement(txn, captured=amount if kind == Kind.CAPTURE else 0):
        return LedgerResult(txn, False)
    return None


def _settle_fingerprint(kind: str, hold_id: uuid.UUID, amount: int | None) -> str:
    """The request hash of a capture or release: the same on both paths, or a replay would conflict."""
    if kind == Kind.CAPTURE:
        return request_hash("capture", hold_id=str(hold_id), amount=amount)
    return request_hash("release", hold_id=str(hold_id))


_SETTLE_SQL = (
    """
    WITH closed AS (
        UPDATE {holds}
           SET status = %s, captured_amount = COALESCE(%s, amount),
               released_amount = amount - COALESCE(%s, amount), closed_at = %s
         WHERE id = %s AND source = %s AND status = %s AND expires_at > %s AND COALESCE(%s, amount) <= amount
           AND NOT EXISTS (SELECT 1 FROM {transactions} WHERE source = %s AND external_id = %s)
     RETURNING id, {hold_account_column} AS account_id, amount, captured_amount, released_amount
    ), acct AS (
        UPDATE {accounts} AS account
           SET balance = account.balance - closed.captured_amount, held = account.held - closed.amount
          FROM closed
         WHERE account.id = closed.account_id
     RETURNING account.id, account.user_id, account.balance, account.held,
               closed.amount AS hold_amount, closed.captured_amount AS captured, closed.released_amount AS released
    ), txn AS (
        INSERT INTO {transactions} ({columns}, {account_column}, amount, balance_after, held_after)
        SELECT {placeholders}, id, CASE WHEN %s THEN released ELSE captured END, balance, held FROM acct
        RETURNING id
"""
    + _SETTLE_LEGS_CTE
    + """    )
    SELECT id, user_id, balance, held, hold_amount, captured, released FROM acct
"""
)


# A capture in one statement: ``_SETTLE_SQL`` taking the captured points from the lots (see
# ``_OPEN_LOTS_CTE``). The hold is closed first (hold, then account: the lock order of every settle),
# and only when the first open lots cover the capture. When the account's row changed since the
# statement began, ``acct`` updates nothing; the Transaction, which must name an account, then has
# none, and the statement fails as a whole (NOT NULL), hold closure included.
_CAPTURE_SQL = (
    """
    WITH cur AS (
        SELECT account.id, account.xmin
          FROM {holds} AS hold JOIN {accounts} AS account ON account.id = hold.{hold_account_column}
         WHERE hold.id = %s
    ), """
    + _OPEN_LOTS_CTE
    + """, closed AS (
        UPDATE {holds}
           SET status = %s, captured_amount = COALESCE(%s, amount),
               released_amount = amount - COALESCE(%s, amount), closed_at = %s
         WHERE id = %s AND source = %s AND status = %s AND expires_at > %s AND COALESCE(%s, amount) <= amount
           AND NOT EXISTS (SELECT 1 FROM {transactions} WHERE source = %s AND external_id = %s)
           AND (SELECT max(upto) FROM open) >= COALESCE(%s, amount)
     RETURNING id, {hold_account_column} AS account_id, amount, captured_amount, released_amount
    ), acct AS (
        UPDATE {accounts} AS account
           SET balance = account.balance - closed.captured_amount, held = account.held - closed.amount
          FROM closed
         WHERE account.id = closed.account_id AND account.xmin = (SELECT xmin FROM cur)
     RETURNING account.id, account.user_id, account.balance, account.held,
               closed.amount AS hold_amount, closed.captured_amount AS captured, closed.released_amount AS released
    ), takes AS (
        SELECT open.id, LEAST(open.remaining, acct.captured - (open.upto - open.remaining)) AS take
          FROM open, acct
         WHERE open.upto - open.remaining < acct.captured
    ), taken AS (
        UPDATE {lots} AS lot SET remaining = lot.remaining - takes.take
          FROM takes
         WHERE lot.id = takes.id
     RETURNING lot.id, takes.take
    ), txn AS (
        INSERT INTO {transactions} ({columns}, {account_column}, amount, balance_after, held_after)
        SELECT {placeholders}, acct.id, closed.captured_amount, acct.balance, acct.held
          FROM closed LEFT JOIN acct ON true
        RETURNING id
"""
    + _SETTLE_LEGS_CTE
    + """    ), used AS (
        INSERT INTO {uses} (transaction_id, lot_id, amount, returned)
        SELECT txn.id, taken.id, taken.take, 0 FROM txn, taken
    )
    SELECT id, user_id, balance, held, hold_amount, captured, released FROM acct
"""
)


def _settle_in_one_statement(txn: Transaction, *, captured: int | None) -> bool:
    """The common case of a capture (``captured`` points, None: all) or a release (0) as one
    PostgreSQL statement: close the active hold, move the account's balance and held, insert the
    Transaction with the balance after it and its entries (the legs of ``_settle_legs``); a
    capture also takes the captured points from the lots (``_CAPTURE_SQL``). False, with nothing
    changed, when the key is taken or the hold is not this client's, not active, expired or smaller
    than ``captured``, or, for a capture, when the first open lots do not cover it or the account
    changed since the statement began: the stepwise path then answers (a replay, the refusal in its
    usual order, or the same capture in steps)."""
    columns, values = column_values(txn, exclude=("account", "amount", "balance_after", "held_after"))
    now = txn.created_at
    status = Hold.Status.RELEASED if txn.kind == Kind.RELEASE else Hold.Status.CAPTURED
    if txn.kind == Kind.RELEASE:
        params = [
            status, captured, captured, now,
            txn.hold_id, txn.source, Hold.Status.ACTIVE, now, captured, txn.source, txn.external_id,
            *values,
            True,
            Part.HELD,
            system_account_id(SystemAccount.SPENT), Part.AVAILABLE,
            Part.AVAILABLE,
        ]  # fmt: skip
        sql = ledger_sql(_SETTLE_SQL, tuple(columns))
    else:
        params = [
            txn.hold_id,
            status, captured, captured, now,
            txn.hold_id, txn.source, Hold.Status.ACTIVE, now, captured, txn.source, txn.external_id, captured,
            *values,
            Part.HELD,
            system_account_id(SystemAccount.SPENT), Part.AVAILABLE,
            Part.AVAILABLE,
        ]  # fmt: skip
        sql = ledger_sql(_CAPTURE_SQL, tuple(columns))
    row = _one_statement_row(sql, params)
    if row is None:
        return False
    account_id, user_id, balance, held, hold_amount, captured_amount, released = row
    account = _account_as_left(account_id, user_id, balance, held)
    hold = Hold.from_db(
        connection.alias,
        ["id", "account_id", "source", "amount", "status", "captured_amount", "released_amount", "closed_at"],
        [txn.hold_id, account_id, txn.source, hold_amount, status, captured_amount, released, now],
    )
    hold.account = account
    txn.amount = released if txn.kind == Kind.RELEASE else captured_amount
    _one_statement_saved(txn, account, hold)
    return True


@transaction.atomic
def _capture_in_steps(*, source: str, external_id: str, hold_id, amount: int | None) -> LedgerResult:
    hold = _hold_for(source, hold_id)
    captured = hold.amount if amount is None else amount
    fingerprint = _settle_fingerprint(Kind.CAPTURE, hold.pk, amount)
    txn, replayed = _claim(
        source=source, external_id=external_id, fingerprint=fingerprint, kind=Kind.CAPTURE,
        account=hold.account, amount=captured, hold=hold,
    )  # fmt: skip
    if replayed:
        return LedgerResult(txn, True)
    if not hold.is_active_at(txn.created_at):
        raise HoldNotActive(details={"hold_id": str(hold.pk)})
    if captured > hold.amount:
        raise CaptureExceedsHold(details={"held": hold.amount, "requested": captured})
    _hold_close(hold, status=Hold.Status.CAPTURED, captured=captured, now=txn.created_at)
    balance, held = _apply_or_refuse(hold.account_id, balance_delta=-captured, held_delta=-hold.amount)
    lots_take(account_id=hold.account_id, amount=captured, txn=txn, record=True)
    _post(txn, _settle_legs(hold, captured), balance=balance, held=held)
    return LedgerResult(txn, False)


@_counted("release")
def hold_release(*, source: str, external_id: str, hold_id) -> LedgerResult:
    """Return an active hold's amount to available."""
    _operation_check(external_id=external_id, amount_required=False)
    settled = _settled_in_one_statement(source, external_id, hold_id, kind=Kind.RELEASE, amount=None)
    if settled is not None:
        return settled
    return _release_in_steps(source=source, external_id=external_id, hold_id=hold_id)


@transaction.atomic
def _release_in_steps(*, source: str, external_id: str, hold_id) -> LedgerResult:
    hold = _hold_for(source, hold_id)
    fingerprint = _settle_fingerprint(Kind.RELEASE, hold.pk, None)
    txn, replayed = _claim(
        source=source, external_id=external_id, fingerprint=fingerprint, kind=Kind.RELEASE,
        account=hold.account, amount=hold.amount, hold=hold,
    )  # fmt: skip
    if replayed:
        return LedgerResult(txn, True)
    _hold_close(hold, status=Hold.Status.RELEASED, captured=0, now=txn.created_at)
    balance, held = _apply_or_refuse(hold.account_id, balance_delta=0, held_delta=-hold.amount)
    _post(txn, _settle_legs(hold, 0), balance=balance, held=held)
    return LedgerResult(txn, False)


@_counted("expiry")
@transaction.atomic
def hold_expire(*, hold_id) -> LedgerResult | None:
    """Release a hold past its expiry with a transaction of kind ``expiry``; None if not due."""
    now = timezone.now()
    # Lock the hold row only ("self"): locking the joined account as well would make a sweep skip
    # every hold of an account that is busy with any other operation at that moment.
    hold = (
        Hold.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("account")
        .filter(pk=hold_id, status=Hold.Status.ACTIVE, expires_at__lte=now)
        .first()
    )
    if hold is None:
        return None
    txn, replayed = _claim(
        source=SYSTEM_SOURCE, external_id=f"expiry:{hold.pk}",
        fingerprint=request_hash("expiry", hold_id=str(hold.pk)),
        kind=Kind.EXPIRY, account=hold.account, amount=hold.amount, hold=hold, reason="hold expired",
    )  # fmt: skip
    if replayed:
        return LedgerResult(txn, True)
    Hold.objects.filter(pk=hold.pk).update(status=Hold.Status.EXPIRED, released_amount=hold.amount, closed_at=now)
    balance, held = _apply_or_refuse(hold.account_id, balance_delta=0, held_delta=-hold.amount)
    _post(txn, _settle_legs(hold, 0), balance=balance, held=held)
    return LedgerResult(txn, False)


def holds_expire_due(*, batch_size: int = 500) -> int:
    """Expire every hold past its expiry; safe to run from several workers at once.

    A hold that cannot be expired is logged and skipped (it stays due for the next run).
    """
    expired = 0
    skipped: set = set()
    while True:
        due = list(
            Hold.objects.filter(status=Hold.Status.ACTIVE, expires_at__lte=timezone.now())
            .exclude(pk__in=skipped)
            .order_by("expires_at")
            .values_list("pk", flat=True)[:batch_size]
        )
        if not due:
            return expired
        progressed = 0
        for hold_id in due:
            try:
                result = hold_expire(hold_id=hold_id)
            except Exception:
                # One hold the ledger refuses must not stop every later hold from expiring.
                logger.exception("hold expiry skipped", extra={"hold_id": str(hold_id)})
                skipped.add(hold_id)
                continue
            if result is not None and not result.replayed:
                progressed += 1
        expired += progressed
        if progressed == 0:
            return expired  # the rest is skipped or being handled by another worker


@_counted("adjustment")
@transaction.atomic
def account_adjust(
    *,
    user_id: str,
    amount: int,
    reason: str,
    staff_user,
    external_id: str | None = None,
    expires_at: datetime | None = None,
) -> LedgerResult:
    """A staff correction: a signed amount posted against the adjustments account, never an edit.

    A positive one opens a lot expiring at ``expires_at`` (default as a credit's); a negative one
    takes from the lots as a debit does."""
    if not _is_int(amount) or not amount or abs(amount) > MAX_AMOUNT:
        raise ValueError(f"An adjustment needs a non-zero whole amount of at most {MAX_AMOUNT} points either way.")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 200:
        raise ValueError("An adjustment needs a reason of at most 200 characters.")
    try:
        _operation_check(
            external_id=external_id or "-", user_id=user_id, amount_required=False, reason=reason, expires_at=expires_at
        )
    except InvalidRequest as exc:
        raise ValueError(f"The adjustment is invalid: {exc.details}") from None
    external_id = external_id or f"adjustment:{uuid.uuid4()}"
    expires_at = _in_utc(expires_at)
    extra = {} if expires_at is None else {"expires_at": expires_at.isoformat()}
    fingerprint = request_hash("adjustment", user_id=user_id, amount=amount, reason=reason, **extra)
    account = _user_account(user_id)
    txn, replayed = _claim(
        source=STAFF_SOURCE, external_id=external_id, fingerprint=fingerprint, kind=Kind.ADJUSTMENT,
        account=account, amount=abs(amount), reason=reason,
        metadata={"staff_user": staff_user.get_username(), "direction": "credit" if amount > 0 else "debit"},
        created_by=staff_user,
    )  # fmt: skip
    if replayed:
        return LedgerResult(txn, True)
    balance, held = _apply_or_refuse(account.pk, balance_delta=amount, held_delta=0)
    if amount > 0:
        lot_expires_at = lot_expiry(posted_at=txn.created_at, expires_at=expires_at)
        lot_open(txn=txn, account_id=account.pk, amount=amount, expires_at=lot_expires_at)
    else:
        lots_take(account_id=account.pk, amount=-amount, txn=txn, record=True)
    _post(
        txn,
        [(account.pk, Part.AVAILABLE, amount), (system_account_id(SystemAccount.ADJUSTMENTS), Part.AVAILABLE, -amount)],
        balance=balance,
        held=held,
    )
    return LedgerResult(txn, False)
