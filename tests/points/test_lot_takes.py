"""Debits and captures take from the lots in the same statement as the rest of the operation (soonest
expiry first, what they took recorded); a take the first open lots do not cover, and an account that
changed while the statement waited for it, go the stepwise way with the same outcome."""

import threading
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from points import services
from points.lots import lots_take
from points.models import Account, Lot, LotUse, SystemAccount, Transaction

from .conftest import assert_ledger_ok, capture, credit, debit, hold, totals
from .test_concurrency import run_together
from .test_transfer_paths import _statements

pytestmark = pytest.mark.django_db(transaction=True)


def remaining(user_id: str) -> list[int]:
    """The remaining points of the user's lots in the order they were opened."""
    return list(
        Lot.objects.filter(account__user_id=user_id).order_by("created_at", "id").values_list("remaining", flat=True)
    )


def uses(txn) -> list[tuple[int, int]]:
    """(points taken, lot's amount) of what ``txn`` took, by the lot's opening order."""
    return list(
        LotUse.objects.filter(transaction_id=txn.pk)
        .order_by("lot__created_at", "lot_id")
        .values_list("amount", "lot__amount")
    )


def three_lots(user_id: str) -> None:
    """Lots of 10 (expires last), 20 (never) and 30 (expires first), opened in that order."""
    now = timezone.now()
    credit(user_id, 10, expires_at=now + timedelta(days=20))
    credit(user_id, 20)
    credit(user_id, 30, expires_at=now + timedelta(days=10))


def test_a_debit_is_one_statement_soonest_expiry_first():
    three_lots("alice")
    services.system_account_id(SystemAccount.SPENT)

    result, statements = _statements(lambda: debit("alice", 35))

    assert statements == ["WITH"]
    assert remaining("alice") == [5, 20, 0]
    assert uses(result.transaction) == [(5, 10), (30, 30)]
    assert (result.transaction.balance_after, totals("alice")) == (25, (25, 0, 25))
    assert debit("alice", 35, external_id=result.transaction.external_id).replayed is True
    assert_ledger_ok()


def test_a_capture_is_one_statement_soonest_expiry_first():
    three_lots("alice")
    services.system_account_id(SystemAccount.SPENT)
    held = hold("alice", 50)

    result, statements = _statements(lambda: capture(held.transaction.hold_id, amount=45))

    assert statements == ["WITH"]
    assert remaining("alice") == [0, 15, 0]
    assert uses(result.transaction) == [(10, 10), (5, 20), (30, 30)]
    assert (result.transaction.amount, result.transaction.hold.status) == (45, "captured")
    assert totals("alice") == (15, 0, 15)
    assert_ledger_ok()


@pytest.mark.parametrize("operation", ["debit", "capture"])
def test_a_take_beyond_the_first_sixteen_lots_goes_the_stepwise_way(operation):
    for _ in range(20):
        credit("alice", 1)
    services.system_account_id(SystemAccount.SPENT)
    if operation == "debit":
        result, statements = _statements(lambda: debit("alice", 18))
    else:
        held = hold("alice", 18)
        result, statements = _statements(lambda: capture(held.transaction.hold_id))

    assert statements[0] == "WITH" and "BEGIN" in statements  # tried, then in steps
    assert remaining("alice") == [0] * 18 + [1, 1]
    assert len(uses(result.transaction)) == 18
    assert totals("alice") == (2, 0, 2)
    assert_ledger_ok()


@pytest.mark.ledger_broken  # lots taken without the balance change that goes with them, to see which
def test_lots_take_takes_the_given_lot_first_then_soonest_expiry():
    three_lots("alice")
    never = Lot.objects.get(account__user_id="alice", expires_at=None)
    account = Account.objects.get(user_id="alice")
    with transaction.atomic():
        txn = debit("alice", 1).transaction  # any transaction to record against
        taken = lots_take(account_id=account.pk, amount=25, txn=txn, record=True, first_lot_id=never.pk)
    # The debit took 1 from the 30; then the never-expiring 20 first, then the soonest, the 29 left.
    assert sorted(taken, key=lambda take: take[1]) == [(Lot.objects.get(amount=30).pk, 5), (never.pk, 20)]
    assert remaining("alice") == [10, 0, 24]


def _while_a_credit_of_the_soonest_lot_holds_the_row(operation):
    """Run ``operation`` in one thread while another holds alice's account row and, a moment after
    the operation has started waiting for it, credits a lot expiring soonest (key ``soonest``) and
    commits; the operation's result, or the exception it raised."""
    locked = threading.Event()

    def work(index):
        if index == 1:
            locked.wait(timeout=10)
            return operation()
        with transaction.atomic():
            Account.objects.select_for_update().get(user_id="alice")
            locked.set()
            threading.Event().wait(timeout=1)  # the operation starts meanwhile and waits for the row
            credit("alice", 5, external_id="soonest", expires_at=timezone.now() + timedelta(days=1))

    return run_together(work, count=2)[1]


def test_a_debit_whose_account_changes_while_it_waits_takes_from_the_lots_as_they_are_then():
    """A concurrent credit of a lot expiring soonest commits while the debit's statement waits for
    the account's row: the debit must see that lot (its snapshot predates it), so it goes in steps."""
    credit("alice", 100)
    services.system_account_id(SystemAccount.SPENT)
    result = _while_a_credit_of_the_soonest_lot_holds_the_row(lambda: debit("alice", 3, external_id="waiting"))

    assert not isinstance(result, Exception), result
    assert result.transaction.balance_after == 102
    soonest = Lot.objects.get(transaction__external_id="soonest")
    assert soonest.remaining == 2  # taken from the lot that expires first, which the debit's snapshot did not have
    assert Transaction.objects.get(external_id="waiting").amount == 3
    assert totals("alice") == (102, 0, 102)
    assert_ledger_ok()


def test_a_capture_whose_account_changes_while_it_waits_is_written_whole_in_steps():
    """The capture's statement closes the hold before it reaches the account's row; when the row
    changed meanwhile, the statement fails as a whole (the hold stays active) and the stepwise path
    captures it from the lots as they are then."""
    credit("alice", 100)
    held = hold("alice", 30)
    services.system_account_id(SystemAccount.SPENT)
    result = _while_a_credit_of_the_soonest_lot_holds_the_row(
        lambda: capture(held.transaction.hold_id, external_id="waiting", amount=7)
    )

    assert not isinstance(result, Exception), result
    assert (result.transaction.amount, result.transaction.hold.status) == (7, "captured")
    assert Lot.objects.get(transaction__external_id="soonest").remaining == 0  # the lot expiring first
    assert Transaction.objects.filter(kind="capture").count() == 1
    assert totals("alice") == (98, 0, 98)
    assert_ledger_ok()
