"""Hold and release take one of two paths, as a credit does: one statement for the common case (the
account exists, the key is new, the funds suffice; the hold is this client's and active), the
stepwise path for everything else, which also gives every refusal. A capture does too, taking from
the lots in the same statement. Both paths must store the same ledger and answer the same body, alone
and under concurrency. (Captures racing releases of one hold are in test_concurrency.py.)"""

from datetime import timedelta

import pytest

from points import services
from points.errors import CaptureExceedsHold, HoldNotActive, IdempotencyConflict, InsufficientFunds, NotFound
from points.models import Entry, Hold, Lot, SystemAccount, Transaction
from points.serializers import operation_result

from .conftest import SOURCE, assert_ledger_ok, capture, credit, hold, release, totals
from .test_concurrency import THREADS, kinds, run_together, unexpected
from .test_transfer_paths import _statements

pytestmark = pytest.mark.django_db(transaction=True)


def _stored(result) -> Transaction:
    return Transaction.objects.select_related("account", "hold").get(pk=result.transaction.pk)


def _ledger_rows(txn: Transaction) -> dict:
    """What an operation wrote, without its ids and times."""
    hold_row = Hold.objects.get(pk=txn.hold_id)
    return {
        "transaction": (txn.kind, txn.amount, txn.reason, txn.metadata, txn.balance_after, txn.held_after),
        "entries": sorted(
            ("user" if e.account.user_id else e.account.code, e.part, e.amount)
            for e in Entry.objects.filter(transaction=txn)
        ),
        "hold": (hold_row.status, hold_row.amount, hold_row.captured_amount, hold_row.released_amount),
    }


def _hold_then_capture(user: str, *, captured: int | None) -> tuple:
    credit(user, 100)
    held = hold(user, 30, reason="basket", metadata={"order": 7}, expires_in=600)
    if captured == 0:
        return held, release(held.transaction.hold_id)
    settled = capture(held.transaction.hold_id, amount=captured)
    return held, settled


@pytest.mark.parametrize("captured", [None, 30, 12, 0], ids=["all by default", "all", "part", "released"])
def test_both_paths_store_the_same_rows_and_answer_the_same_body(captured, monkeypatch):
    one = _hold_then_capture("one", captured=captured)
    with monkeypatch.context() as patch:
        patch.setattr(services, "_hold_in_one_statement", lambda *args: False)
        patch.setattr(services, "_settle_in_one_statement", lambda *args, **kwargs: False)
        steps = _hold_then_capture("steps", captured=captured)

    for one_result, steps_result in zip(one, steps, strict=True):
        assert _ledger_rows(_stored(one_result)) == _ledger_rows(_stored(steps_result))
        # The body answered now is the body a replay rebuilds from the stored rows.
        assert operation_result(one_result.transaction) == operation_result(_stored(one_result))
        body, reference = operation_result(one_result.transaction), operation_result(steps_result.transaction)
        for varying in ("transaction_id", "user_id", "hold_id", "expires_at"):
            body.pop(varying, None), reference.pop(varying, None)
        assert body == reference
    spent = 30 if captured is None else captured
    assert totals("one") == totals("steps") == (100 - spent, 0, 100 - spent)
    assert_ledger_ok()


def test_a_hold_a_capture_and_a_release_are_one_statement_each():
    credit("alice", 100)

    held, statements = _statements(lambda: hold("alice", 40, expires_in=60))
    assert statements == ["WITH"]  # in autocommit mode the statement is its own transaction
    stored_hold = Hold.objects.get(pk=held.transaction.hold_id)
    assert (stored_hold.status, stored_hold.source, stored_hold.account.user_id) == ("active", SOURCE, "alice")
    assert stored_hold.expires_at == held.transaction.created_at + timedelta(seconds=60)
    assert totals("alice") == (100, 40, 60)

    services.system_account_id(SystemAccount.SPENT)  # looked up once per process
    settled, statements = _statements(lambda: capture(held.transaction.hold_id, amount=25))
    assert statements == ["WITH"]  # the lots it takes from included
    assert list(Lot.objects.filter(account__user_id="alice").values_list("remaining", flat=True)) == [75]
    assert (settled.replayed, settled.transaction.amount, settled.transaction.hold.amount) == (False, 25, 40)
    assert totals("alice") == (75, 0, 75)

    released, statements = _statements(lambda: release(hold("alice", 15).transaction.hold_id))
    assert statements == ["WITH", "WITH"]  # the hold, then its release
    assert (released.transaction.kind, released.transaction.amount, released.transaction.hold.status) == (
        "release", 15, "released",
    )  # fmt: skip
    assert totals("alice") == (75, 0, 75)
    assert_ledger_ok()


def test_replays_and_refusals_take_the_stepwise_path_with_their_usual_answers():
    credit("alice", 50)
    with pytest.raises(InsufficientFunds):
        hold("alice", 51, external_id="too-much")
    with pytest.raises(InsufficientFunds):
        hold("nobody", 1)  # no account: the stepwise path opens one, which has nothing available
    held = hold("alice", 20, external_id="h")
    assert hold("alice", 20, external_id="h").replayed is True
    with pytest.raises(IdempotencyConflict):
        hold("alice", 21, external_id="h")

    hold_id = held.transaction.hold_id
    with pytest.raises(NotFound):
        capture(hold_id, source="another-client")
    with pytest.raises(NotFound):
        capture("not-a-uuid")
    with pytest.raises(CaptureExceedsHold):
        capture(hold_id, amount=21)
    settled = capture(hold_id, external_id="c")
    assert capture(hold_id, external_id="c").replayed is True
    with pytest.raises(HoldNotActive):
        capture(hold_id)  # captured already
    expired = hold("alice", 5)
    Hold.objects.filter(pk=expired.transaction.hold_id).update(expires_at=expired.transaction.created_at)
    with pytest.raises(HoldNotActive):
        capture(expired.transaction.hold_id)

    assert settled.transaction.amount == 20
    assert not Transaction.objects.filter(external_id="too-much").exists()
    assert totals("alice") == (30, 5, 25)
    assert_ledger_ok()


def test_parallel_captures_of_one_hold_settle_it_once():
    credit("alice", 100)
    hold_id = hold("alice", 60).transaction.hold_id

    outcomes = run_together(lambda i: capture(hold_id, amount=10 + i, external_id=f"cap-{i}"))

    assert unexpected(outcomes, HoldNotActive) == []
    assert kinds(outcomes) == {"LedgerResult": 1, "HoldNotActive": THREADS - 1}
    won = next(o for o in outcomes if isinstance(o, services.LedgerResult)).transaction.amount
    assert totals("alice") == (100 - won, 0, 100 - won)
    assert Transaction.objects.filter(hold_id=hold_id, kind="capture").count() == 1
    assert_ledger_ok()


def test_parallel_replays_of_one_capture_post_it_once():
    credit("alice", 100)
    hold_id = hold("alice", 60).transaction.hold_id

    outcomes = run_together(lambda i: capture(hold_id, amount=15, external_id="only-once"))

    assert unexpected(outcomes) == []
    assert [o.replayed for o in outcomes].count(False) == 1
    assert {o.transaction.pk for o in outcomes} == {Transaction.objects.get(external_id="only-once").pk}
    assert totals("alice") == (85, 0, 85)
    assert_ledger_ok()


def test_parallel_holds_that_do_not_divide_the_balance_stop_before_it():
    """As test_concurrency's parallel holds, with a remainder: the guard refuses the hold that would
    pass zero available, not only the one that starts at zero."""
    credit("alice", 100)

    outcomes = run_together(lambda i: hold("alice", 30, external_id=f"h-{i}"))

    assert unexpected(outcomes, InsufficientFunds) == []
    assert kinds(outcomes) == {"LedgerResult": 3, "InsufficientFunds": THREADS - 3}
    assert totals("alice") == (100, 90, 10)
    assert_ledger_ok()
