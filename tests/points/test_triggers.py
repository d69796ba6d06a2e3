"""PostgreSQL guards the books itself: immutable entries, undeletable transactions, balance at commit."""

import uuid

import pytest
from django.db import IntegrityError, connection, transaction

from points.models import Account, Entry, Transaction

from .conftest import assert_ledger_ok, credit, ledger_snapshot, totals

pytestmark = pytest.mark.django_db(transaction=True)


def system_account(code: str = "points_issued") -> Account:
    return Account.objects.get(code=code)


def bare_transaction(account: Account, **fields) -> Transaction:
    return Transaction.objects.create(
        kind="credit", source="test", external_id=str(uuid.uuid4()), request_hash="x", account=account,
        amount=fields.pop("amount", 10), **fields,
    )  # fmt: skip


def test_updating_an_entry_is_refused():
    txn = credit("alice", 100).transaction
    entry = Entry.objects.filter(transaction=txn).first()

    with pytest.raises(IntegrityError, match="immutable"), transaction.atomic():
        Entry.objects.filter(pk=entry.pk).update(amount=999)

    entry.refresh_from_db()
    assert entry.amount in (100, -100)
    with pytest.raises(IntegrityError, match="immutable"), transaction.atomic():
        entry.amount = 5
        entry.save()
    assert_ledger_ok()


def test_deleting_an_entry_is_refused():
    txn = credit("alice", 100).transaction

    with pytest.raises(IntegrityError, match="immutable"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM points_entry WHERE transaction_id = %s", [txn.pk])

    assert Entry.objects.filter(transaction=txn).count() == 2
    assert_ledger_ok()


def test_deleting_a_transaction_is_refused():
    txn = credit("alice", 100).transaction

    with pytest.raises(IntegrityError, match="immutable"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM points_transaction WHERE id = %s", [txn.pk])

    assert Transaction.objects.filter(pk=txn.pk).exists()


def test_a_transaction_whose_entries_do_not_sum_to_zero_fails_at_commit():
    credit("alice", 100)
    before = ledger_snapshot()
    alice = Account.objects.get(user_id="alice")

    with pytest.raises(IntegrityError, match="unbalanced"):
        with transaction.atomic():
            txn = bare_transaction(alice)
            Entry.objects.create(transaction=txn, account=alice, amount=10)
            Entry.objects.create(transaction=txn, account=system_account(), amount=-9)
            # Inside the transaction nothing complains yet: the check is deferred to the commit.
            assert Entry.objects.filter(transaction=txn).count() == 2

    assert ledger_snapshot() == before
    assert totals("alice") == (100, 0, 100)


def test_a_transaction_without_entries_fails_at_commit():
    before = ledger_snapshot()
    with pytest.raises(IntegrityError, match="no entries"), transaction.atomic():
        bare_transaction(system_account())
    assert ledger_snapshot() == before


def test_an_entry_added_later_to_a_committed_transaction_fails_at_commit():
    txn = credit("alice", 100).transaction
    with pytest.raises(IntegrityError, match="unbalanced"), transaction.atomic():
        Entry.objects.create(transaction=txn, account=system_account(), amount=1)
    assert Entry.objects.filter(transaction=txn).count() == 2
    assert_ledger_ok()


def test_a_balanced_transaction_written_by_hand_commits():
    """The guard is about balance, not about who writes: a balanced set of entries is accepted."""
    spent, issued = system_account("points_spent"), system_account("points_issued")
    with transaction.atomic():
        txn = bare_transaction(spent)
        Entry.objects.create(transaction=txn, account=spent, amount=10)
        Entry.objects.create(transaction=txn, account=issued, amount=-10)
    assert Entry.objects.filter(transaction=txn).count() == 2
