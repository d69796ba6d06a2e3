"""Reversals and expiry runs against concurrent writers on PostgreSQL: real threads, own connections."""

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from points.errors import InsufficientFunds, ReversalExceedsOriginal
from points.expiry import lots_expire_due
from points.models import Lot, Transaction
from points.reversals import transaction_reverse

from .conftest import SOURCE, assert_ledger_ok, credit, debit, totals
from .test_concurrency import kinds, run_together, unexpected

pytestmark = pytest.mark.django_db(transaction=True)


def test_twenty_parallel_partial_reversals_of_one_credit_exactly_the_affordable_ones_succeed():
    original = credit("alice", 100).transaction
    debit("alice", 30)  # 70 available: 7 reversals of 10 can be taken back

    outcomes = run_together(
        lambda i: transaction_reverse(source=SOURCE, external_id=f"r-{i}", transaction_id=original.pk, amount=10),
        count=20,
    )

    assert unexpected(outcomes, InsufficientFunds) == []
    assert kinds(outcomes) == Counter({"LedgerResult": 7, "InsufficientFunds": 13})
    assert totals("alice") == (0, 0, 0)
    assert Transaction.objects.get(pk=original.pk).reversed_amount == 70
    assert_ledger_ok()


def test_twenty_parallel_partial_reversals_never_exceed_the_original():
    original = credit("alice", 100).transaction
    credit("alice", 1000)

    outcomes = run_together(
        lambda i: transaction_reverse(source=SOURCE, external_id=f"r-{i}", transaction_id=original.pk, amount=15),
        count=20,
    )

    assert unexpected(outcomes, ReversalExceedsOriginal) == []
    assert kinds(outcomes) == Counter({"LedgerResult": 6, "ReversalExceedsOriginal": 14})
    assert Transaction.objects.get(pk=original.pk).reversed_amount == 90
    assert totals("alice") == (1010, 0, 1010)
    assert_ledger_ok()


def test_a_reversal_racing_a_debit_of_the_same_points_lets_exactly_one_through():
    for round_ in range(5):
        user = f"racer-{round_}"
        original = credit(user, 100).transaction

        def work(i, user=user, original=original, round_=round_):
            if i == 0:
                return transaction_reverse(source=SOURCE, external_id=f"rev-{round_}", transaction_id=original.pk)
            return debit(user, 100, external_id=f"spend-{round_}")

        outcomes = run_together(work, count=2)

        assert unexpected(outcomes, InsufficientFunds) == []
        assert kinds(outcomes) == Counter({"LedgerResult": 1, "InsufficientFunds": 1})
        assert totals(user) == (0, 0, 0)
    assert_ledger_ok()


def test_three_parallel_expiry_runs_expire_each_lot_once():
    past = timezone.now() - timedelta(minutes=1)
    for n in range(60):
        result = credit(f"user-{n % 20}", 10 + n, expires_at=timezone.now() + timedelta(days=1))
        Lot.objects.filter(transaction_id=result.transaction.pk).update(expires_at=past)
    due_points = sum(10 + n for n in range(60))

    runs = run_together(lambda i: lots_expire_due(batch_size=7), count=3)
    # A run that found an account busy left its lots; the next run finishes them.
    leftover = lots_expire_due()

    assert [type(run).__name__ for run in runs] == ["ExpiryRun"] * 3
    assert sum(run.expired_lots for run in runs) + leftover.expired_lots == 60
    assert sum(run.expired_points for run in runs) + leftover.expired_points == due_points
    assert sum(run.skipped for run in runs) == 0
    assert Transaction.objects.filter(kind="points_expiry").count() == 60
    assert not Lot.objects.filter(remaining__gt=0).exists()
    assert all(totals(f"user-{n}") == (0, 0, 0) for n in range(20))
    assert_ledger_ok()


def test_an_expiry_run_beside_debits_and_credits_keeps_lots_and_balances_together():
    past = timezone.now() - timedelta(minutes=1)
    for n in range(10):
        result = credit(f"busy-{n}", 100, expires_at=timezone.now() + timedelta(days=1))
        Lot.objects.filter(transaction_id=result.transaction.pk).update(expires_at=past)
        credit(f"busy-{n}", 50)

    def work(i):
        if i < 2:
            return lots_expire_due(batch_size=3)
        user = f"busy-{i % 10}"
        try:
            return debit(user, 40, external_id=f"d-{i}")
        except InsufficientFunds as exc:
            return exc

    outcomes = run_together(work, count=12)
    lots_expire_due()

    assert unexpected(outcomes, InsufficientFunds) == []
    assert not Lot.objects.filter(remaining__gt=0, expires_at__lte=timezone.now()).exists()
    assert_ledger_ok()
