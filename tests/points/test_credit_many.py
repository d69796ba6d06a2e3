"""account_credit_many: a batch of credits in one ledger transaction, each one account_credit's own."""

import pytest

from points.errors import IdempotencyConflict, InvalidRequest
from points.models import Transaction
from points.selectors import account_totals
from points.services import CreditIn, LedgerResult, account_credit, account_credit_many
from points.verification import ledger_verify

from .test_concurrency import run_together


def _ok():
    assert {check.name: check.offenders for check in ledger_verify() if not check.ok} == {}


@pytest.mark.django_db(transaction=True)
def test_a_batch_posts_each_credit_once_and_a_rerun_replays_them():
    credits = [CreditIn(external_id=f"c-{i}", user_id=f"u-{i % 2}", amount=10 + i, reason="r") for i in range(4)]

    first = account_credit_many(source="batcher", credits=credits)
    again = account_credit_many(source="batcher", credits=credits)

    assert all(isinstance(result, LedgerResult) and not result.replayed for result in first.values())
    assert all(result.replayed for result in again.values())
    assert {key: result.transaction.pk for key, result in again.items()} == {
        key: result.transaction.pk for key, result in first.items()
    }
    assert Transaction.objects.filter(source="batcher").count() == 4
    assert account_totals(user_id="u-0")["balance"] == 10 + 12
    assert account_totals(user_id="u-1")["balance"] == 11 + 13
    _ok()


@pytest.mark.django_db(transaction=True)
def test_a_refused_credit_leaves_the_others_of_its_batch_posted():
    account_credit(source="batcher", external_id="taken", user_id="someone", amount=1)
    credits = [
        CreditIn(external_id="a", user_id="u", amount=5),
        CreditIn(external_id="taken", user_id="u", amount=5),  # same key, another request
        CreditIn(external_id="b", user_id="u", amount=0),  # not a valid amount
        CreditIn(external_id="c", user_id="v", amount=7),
    ]

    outcomes = account_credit_many(source="batcher", credits=credits)

    assert isinstance(outcomes["taken"], IdempotencyConflict)
    assert isinstance(outcomes["b"], InvalidRequest)
    assert not outcomes["a"].replayed and not outcomes["c"].replayed
    assert account_totals(user_id="u")["balance"] == 5 and account_totals(user_id="v")["balance"] == 7
    assert account_totals(user_id="someone")["balance"] == 1
    _ok()


@pytest.mark.django_db(transaction=True)
def test_batches_over_the_same_accounts_in_opposite_orders_do_not_deadlock():
    users = [f"hot-{i}" for i in range(5)]

    def batch(index: int):
        order = users if index % 2 else list(reversed(users))
        return account_credit_many(
            source="batcher",
            credits=[CreditIn(external_id=f"b{index}-{user}", user_id=user, amount=1) for user in order],
        )

    outcomes = run_together(batch, count=6)

    assert not [outcome for outcome in outcomes if isinstance(outcome, Exception)], outcomes
    assert all(account_totals(user_id=user)["balance"] == 6 for user in users)
    _ok()
