"""A credit takes one of two paths: one statement for the common case (the account exists, the key
is new), opening its lot too, and the stepwise path for everything else; a debit takes the stepwise
path only (it takes from the lots). Both paths must give the same ledger, alone, inside a caller's
transaction and under concurrency."""

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from points import services
from points.errors import IdempotencyConflict, InsufficientFunds
from points.models import Entry, Transaction

from .conftest import assert_ledger_ok, credit, debit, totals
from .test_concurrency import THREADS, kinds, run_together, unexpected


def _statements(work) -> tuple[object, list[str]]:
    """What ``work`` returned, and the first word of each statement it sent."""
    with CaptureQueriesContext(connection) as captured:
        result = work()
    return result, [query["sql"].split()[0].upper() for query in captured.captured_queries]


@pytest.mark.django_db(transaction=True)
def test_a_credit_to_an_existing_account_is_one_statement_and_one_commit():
    credit("alice", 10)

    result, statements = _statements(lambda: credit("alice", 5, external_id="one-trip", metadata={"k": "v"}))

    assert statements == ["WITH"]  # no BEGIN/COMMIT: in autocommit mode the statement is its own transaction
    assert result.replayed is False
    txn = Transaction.objects.get(external_id="one-trip")
    assert (txn.balance_after, txn.held_after, txn.metadata, txn.account.user_id) == (15, 0, {"k": "v"}, "alice")
    assert sorted(Entry.objects.filter(transaction=txn).values_list("amount", flat=True)) == [-5, 5]
    assert (result.transaction.pk, result.transaction.balance_after) == (txn.pk, 15)
    assert result.transaction.account.user_id == "alice"
    assert totals("alice") == (15, 0, 15)
    assert_ledger_ok()


@pytest.mark.django_db(transaction=True)
def test_the_first_credit_replay_conflict_and_overdraft_take_the_stepwise_path():
    first, statements = _statements(lambda: credit("newcomer", 7, external_id="first"))
    assert statements.index("WITH") < statements.index("BEGIN") and statements[-1] == "COMMIT"
    assert (first.replayed, first.transaction.balance_after) == (False, 7)

    replay = credit("newcomer", 7, external_id="first")
    assert (replay.replayed, replay.transaction.pk) == (True, first.transaction.pk)
    with pytest.raises(IdempotencyConflict):
        credit("newcomer", 8, external_id="first")
    with pytest.raises(InsufficientFunds):
        debit("newcomer", 8, external_id="too-much")

    assert totals("newcomer") == (7, 0, 7)
    assert not Transaction.objects.filter(external_id="too-much").exists()
    assert debit("newcomer", 7, external_id="too-much").transaction.balance_after == 0  # the key was not used up
    assert_ledger_ok()


@pytest.mark.django_db(transaction=True)
def test_inside_a_callers_transaction_a_credit_rolls_back_with_it():
    credit("alice", 10)

    with pytest.raises(RuntimeError), transaction.atomic():
        credit("alice", 5, external_id="undone")
        assert totals("alice") == (15, 0, 15)
        raise RuntimeError("the caller fails later")

    assert totals("alice") == (10, 0, 10)
    assert not Transaction.objects.filter(external_id="undone").exists()
    assert_ledger_ok()


@pytest.mark.django_db(transaction=True)
def test_inside_a_callers_transaction_a_replay_and_a_refusal_leave_it_usable():
    credit("alice", 10, external_id="kept")

    with transaction.atomic():
        assert credit("alice", 10, external_id="kept").replayed is True
        with pytest.raises(InsufficientFunds):
            debit("alice", 11)
        assert credit("alice", 1, external_id="after").transaction.balance_after == 11

    assert totals("alice") == (11, 0, 11)
    assert_ledger_ok()


@pytest.mark.django_db(transaction=True)
def test_parallel_replays_on_an_existing_account_post_exactly_once():
    credit("alice", 1)

    outcomes = run_together(lambda i: credit("alice", 250, external_id="only-once", reason="r"))

    assert unexpected(outcomes) == []
    assert len({o.transaction.pk for o in outcomes}) == 1
    assert [o.replayed for o in outcomes].count(False) == 1
    assert totals("alice") == (251, 0, 251)
    assert_ledger_ok()


@pytest.mark.django_db(transaction=True)
def test_parallel_uses_of_one_key_for_different_users_credit_exactly_one():
    users = [f"user-{i}" for i in range(THREADS)]
    for user in users:
        credit(user, 1)

    outcomes = run_together(lambda i: credit(users[i], 100, external_id="contested"))

    assert unexpected(outcomes, IdempotencyConflict) == []
    assert kinds(outcomes) == {"LedgerResult": 1, "IdempotencyConflict": THREADS - 1}
    winner = next(o for o in outcomes if isinstance(o, services.LedgerResult)).transaction.account.user_id
    assert {user: totals(user)[0] for user in users} == {user: 101 if user == winner else 1 for user in users}
    assert_ledger_ok()


@pytest.mark.django_db(transaction=True)
def test_parallel_credits_and_debits_on_one_existing_account_lose_no_update():
    credit("hot", 1000)

    outcomes = run_together(lambda i: (credit if i % 2 else debit)("hot", 10 + i, external_id=f"op-{i}"))

    assert unexpected(outcomes) == []
    expected = 1000 + sum(10 + i if i % 2 else -(10 + i) for i in range(THREADS))
    assert totals("hot") == (expected, 0, expected)
    stored = dict(Transaction.objects.filter(external_id__startswith="op-").values_list("pk", "balance_after"))
    assert {o.transaction.pk: o.transaction.balance_after for o in outcomes} == stored
    assert_ledger_ok()
