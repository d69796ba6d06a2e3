"""Reversal of a credit, debit or capture, in full or in parts (SPEC §9).

A reversal is a new transaction of kind ``reversal`` pointing at its original; the original's
``reversed_amount`` counts what its reversals took, and the database refuses a count above the
original's amount (a CHECK constraint, and a constraint trigger that compares the reversals' sum).
Concurrent reversals of one original queue on the original's row lock, taken before the account's,
so they never both pass the "not beyond the original" test.
"""

import uuid

from django.db import transaction
from django.db.models import F

from .errors import InsufficientFunds, NotFound, NotReversible, ReversalExceedsOriginal
from .lots import lots_give_back, lots_take
from .models import Account, Entry, Lot, SystemAccount, Transaction
from .services import (
    LedgerResult,
    _apply_or_refuse,
    _claim,
    _counted,
    _operation_check,
    _post,
    request_hash,
    system_account_id,
)

Kind = Transaction.Kind
Part = Entry.Part

# The scope a client needs to reverse each kind of transaction (SPEC §9): taking a credit back is a
# debit, giving a debit or capture back is a credit.
REVERSAL_SCOPES = {Kind.CREDIT: "points:debit", Kind.DEBIT: "points:credit", Kind.CAPTURE: "points:credit"}


def reversal_original(*, source: str, transaction_id=None, original_external_id: str | None = None) -> Transaction:
    """The transaction ``source`` made with this id (or this external_id); NotFound for any other
    (someone else's is not told apart from none)."""
    if original_external_id is not None:
        original = (
            Transaction.objects.select_related("account")
            .filter(source=source, external_id=original_external_id)
            .first()
        )
        if original is None:
            raise NotFound("No such transaction.", details={"transaction_id": f"external_id {original_external_id}"})
        return original
    try:
        original_id = uuid.UUID(str(transaction_id))
    except ValueError:
        raise NotFound("No such transaction.", details={"transaction_id": str(transaction_id)}) from None
    original = Transaction.objects.select_related("account").filter(pk=original_id, source=source).first()
    if original is None:
        raise NotFound("No such transaction.", details={"transaction_id": str(transaction_id)})
    return original


@_counted("reversal")
@transaction.atomic
def transaction_reverse(
    *,
    source: str,
    external_id: str,
    transaction_id=None,
    original_external_id: str | None = None,
    amount: int | None = None,
    reason: str = "",
    metadata: dict | None = None,
    allow_partial: bool = False,
) -> LedgerResult:
    """Reverse ``amount`` (default: what is left unreversed) of a credit, debit or capture ``source`` made,
    named by its ``transaction_id`` or by the ``original_external_id`` it was posted with (for Connect:
    the action id its points credit used).

    A credit's reversal takes the points back, from that credit's own lot first: InsufficientFunds
    when the user's available points are short, unless ``allow_partial``, when it takes what is
    available and stores the rest as ``shortfall`` (possibly all of it: a reversal of nothing).
    A debit's or capture's reversal gives the points back to the lots they came from.
    Refusals: NotFound (not this client's), NotReversible (any other kind), ReversalExceedsOriginal.
    Idempotent per (source, external_id) like every operation.
    """
    _operation_check(external_id=external_id, amount=amount, amount_required=False, reason=reason, metadata=metadata)
    if not isinstance(allow_partial, bool):
        raise TypeError("allow_partial must be a bool")
    metadata = metadata or {}
    original = reversal_original(
        source=source, transaction_id=transaction_id, original_external_id=original_external_id
    )
    fingerprint = request_hash(
        "reverse", transaction_id=str(original.pk), amount=amount, reason=reason, metadata=metadata,
        allow_partial=allow_partial,
    )  # fmt: skip
    txn, replayed = _claim(
        source=source, external_id=external_id, fingerprint=fingerprint, kind=Kind.REVERSAL,
        account=original.account, amount=0, reason=reason, metadata=metadata, reverses=original,
    )  # fmt: skip
    if replayed:
        return LedgerResult(txn, True)
    if original.kind not in Transaction.REVERSIBLE_KINDS:
        raise NotReversible(details={"transaction_id": str(original.pk), "kind": original.kind})
    # The original's row lock queues concurrent reversals of it; its counter is read under the lock.
    # NO KEY UPDATE: it still lets the reversals' foreign keys to the original take their KEY SHARE.
    counted = (
        Transaction.objects.select_for_update(no_key=True)
        .filter(pk=original.pk)
        .values("amount", "reversed_amount")
        .get()
    )
    unreversed = counted["amount"] - counted["reversed_amount"]
    requested = unreversed if amount is None else amount
    if requested > unreversed or requested == 0:
        raise ReversalExceedsOriginal(
            details={
                "transaction_id": str(original.pk),
                "original": counted["amount"],
                "reversed": counted["reversed_amount"],
                "requested": requested,
            }
        )
    account_id = original.account_id
    if original.kind == Kind.CREDIT:
        taken = _credit_taken_back(original, txn, requested, allow_partial)
    else:
        taken = requested
        balance, held = _apply_or_refuse(account_id, balance_delta=taken, held_delta=0)
        lots_give_back(account_id=account_id, original=original, amount=taken, txn=txn)
        _post(
            txn,
            [(account_id, Part.AVAILABLE, taken), (system_account_id(SystemAccount.SPENT), Part.AVAILABLE, -taken)],
            balance=balance,
            held=held,
        )
    if taken:
        Transaction.objects.filter(pk=original.pk).update(reversed_amount=F("reversed_amount") + taken)
    txn.amount, txn.shortfall = taken, requested - taken
    Transaction.objects.filter(pk=txn.pk).update(amount=taken, shortfall=txn.shortfall)
    return LedgerResult(txn, False)


def _credit_taken_back(original: Transaction, txn: Transaction, requested: int, allow_partial: bool) -> int:
    """Take up to ``requested`` points of a credit back; the points taken."""
    account_id = original.account_id
    account = Account.objects.select_for_update().filter(pk=account_id).values("balance", "held").get()
    available = account["balance"] - account["held"]
    if requested > available and not allow_partial:
        raise InsufficientFunds(details={Part.AVAILABLE: available, "requested": requested})
    taken = max(0, min(requested, available))
    if taken == 0:
        # Nothing to take: the reversal is stored (for its replay and its shortfall) without entries.
        txn.balance_after, txn.held_after = account["balance"], account["held"]
        Transaction.objects.filter(pk=txn.pk).update(balance_after=txn.balance_after, held_after=txn.held_after)
        return 0
    balance, held = _apply_or_refuse(account_id, balance_delta=-taken, held_delta=0)
    lot_id = Lot.objects.filter(transaction_id=original.pk).values_list("pk", flat=True).first()
    lots_take(account_id=account_id, amount=taken, txn=txn, record=False, first_lot_id=lot_id)
    _post(
        txn,
        [(account_id, Part.AVAILABLE, -taken), (system_account_id(SystemAccount.ISSUED), Part.AVAILABLE, taken)],
        balance=balance,
        held=held,
    )
    return taken
