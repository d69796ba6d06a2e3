"""Reversal of a credit, debit or capture (SPEC §9): every outcome and refusal of the service."""

from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from points import services
from points.errors import IdempotencyConflict, InsufficientFunds, NotFound, NotReversible, ReversalExceedsOriginal
from points.models import Entry, Lot, Transaction
from points.reversals import transaction_reverse

from .conftest import SOURCE, assert_ledger_ok, capture, credit, debit, hold, new_external_id, release, totals

pytestmark = pytest.mark.django_db


def reverse(transaction_id=None, *, source: str = SOURCE, external_id: str | None = None, **kwargs):
    return transaction_reverse(
        source=source, external_id=external_id or new_external_id("reverse"), transaction_id=transaction_id, **kwargs
    )


def lots_of(user_id: str) -> list[tuple[int, object]]:
    return list(
        Lot.objects.filter(account__user_id=user_id, remaining__gt=0)
        .order_by("expires_at", "created_at")
        .values_list("remaining", "expires_at")
    )


def test_reversing_a_credit_in_full_takes_its_points_back():
    original = credit("alice", 100).transaction

    result = reverse(original.pk, reason="refund", metadata={"order": 1})

    txn = Transaction.objects.get(pk=result.transaction.pk)
    assert (txn.kind, txn.amount, txn.reverses_id, txn.shortfall, txn.reason) == (
        "reversal",
        100,
        original.pk,
        0,
        "refund",
    )
    assert (txn.balance_after, txn.held_after) == (0, 0)
    assert Transaction.objects.get(pk=original.pk).reversed_amount == 100
    assert sorted(Entry.objects.filter(transaction=txn).values_list("amount", flat=True)) == [-100, 100]
    assert totals("alice") == (0, 0, 0)
    assert lots_of("alice") == []
    assert_ledger_ok()


def test_parts_of_a_credit_are_reversed_until_nothing_is_left():
    original = credit("alice", 100).transaction
    reverse(original.pk, amount=30)
    reverse(original.pk, amount=50)

    with pytest.raises(ReversalExceedsOriginal) as refused:
        reverse(original.pk, amount=21, external_id="too-much")
    assert refused.value.details == {
        "transaction_id": str(original.pk), "original": 100, "reversed": 80, "requested": 21,
    }  # fmt: skip
    rest = reverse(original.pk)  # default: what is left
    assert rest.transaction.amount == 20
    with pytest.raises(ReversalExceedsOriginal):
        reverse(original.pk)  # nothing left

    assert not Transaction.objects.filter(external_id="too-much").exists()
    assert Transaction.objects.get(pk=original.pk).reversed_amount == 100
    assert totals("alice") == (0, 0, 0)
    assert_ledger_ok()


def test_only_the_client_that_made_the_original_can_reverse_it():
    original = credit("alice", 100).transaction
    with pytest.raises(NotFound):
        reverse(original.pk, source="another-client")
    with pytest.raises(NotFound):
        reverse("not-a-uuid")
    with pytest.raises(NotFound):
        reverse("00000000-0000-4000-8000-000000000000")
    assert totals("alice") == (100, 0, 100)
    assert Transaction.objects.filter(kind="reversal").count() == 0


def test_holds_releases_expiries_adjustments_and_reversals_are_not_reversible(django_user_model, snapshot):
    credit("alice", 100)
    held = hold("alice", 10)
    released = release(held.transaction.hold_id)
    reversal = reverse(credit("alice", 5).transaction.pk)
    staff = django_user_model.objects.create_user("finance")
    adjustment = services.account_adjust(user_id="alice", amount=3, reason="goodwill", staff_user=staff)
    adjustment_txn = adjustment.transaction
    Transaction.objects.filter(pk=adjustment_txn.pk).update(source=SOURCE)  # even if it were the caller's
    before = snapshot()

    for txn in (held.transaction, released.transaction, reversal.transaction, adjustment_txn):
        with pytest.raises(NotReversible) as refused:
            reverse(txn.pk, external_id=f"no-{txn.pk}")
        assert refused.value.details == {"transaction_id": str(txn.pk), "kind": txn.kind}

    assert snapshot() == before  # nothing written, no external_id used up


def test_a_credit_reversal_is_refused_when_available_is_short():
    original = credit("alice", 100).transaction
    debit("alice", 70)
    hold("alice", 10)

    with pytest.raises(InsufficientFunds) as refused:
        reverse(original.pk, amount=21, external_id="short")

    assert refused.value.details == {"available": 20, "requested": 21}
    assert not Transaction.objects.filter(external_id="short").exists()
    assert reverse(original.pk, amount=20, external_id="short").transaction.amount == 20  # the key was not used up
    assert totals("alice") == (10, 10, 0)
    assert_ledger_ok()


def test_allow_partial_takes_what_is_available_and_answers_the_shortfall():
    original = credit("alice", 100).transaction
    debit("alice", 60)

    result = reverse(original.pk, allow_partial=True)

    assert (result.transaction.amount, result.transaction.shortfall) == (40, 60)
    assert totals("alice") == (0, 0, 0)
    assert Transaction.objects.get(pk=original.pk).reversed_amount == 40
    # What was not taken back can still be reversed later, once the user has points again.
    credit("alice", 100)
    assert reverse(original.pk).transaction.amount == 60
    assert totals("alice") == (40, 0, 40)
    assert_ledger_ok()


@pytest.mark.django_db(transaction=True)
def test_allow_partial_with_nothing_available_stores_a_reversal_of_nothing():
    original = credit("alice", 100).transaction
    debit("alice", 100)

    result = reverse(original.pk, allow_partial=True, external_id="nothing")

    stored = Transaction.objects.get(external_id="nothing")  # committed: the triggers accepted it
    assert (stored.amount, stored.shortfall, stored.balance_after, stored.held_after) == (0, 100, 0, 0)
    assert not Entry.objects.filter(transaction=stored).exists()
    assert result.replayed is False
    replay = reverse(original.pk, allow_partial=True, external_id="nothing")
    assert (replay.replayed, replay.transaction.pk, replay.transaction.shortfall) == (True, stored.pk, 100)
    assert Transaction.objects.get(pk=original.pk).reversed_amount == 0
    assert_ledger_ok()


def test_reversing_a_debit_gives_the_points_back_to_the_lots_they_came_from():
    soon = timezone.now() + timedelta(days=3)
    credit("alice", 50, expires_at=soon)
    credit("alice", 50)
    spent = debit("alice", 80).transaction  # 50 from the expiring lot, 30 from the never-expiring one

    assert lots_of("alice") == [(20, None)]
    first = reverse(spent.pk, amount=30)  # the longest-lived first
    assert lots_of("alice") == [(50, None)]
    reverse(spent.pk)

    assert first.transaction.amount == 30
    assert lots_of("alice") == [(50, soon), (50, None)]
    assert totals("alice") == (100, 0, 100)
    assert Transaction.objects.get(pk=spent.pk).reversed_amount == 80
    assert_ledger_ok()


def test_reversing_a_capture_gives_the_captured_points_back():
    credit("alice", 100)
    held = hold("alice", 60)
    captured = capture(held.transaction.hold_id, amount=40).transaction

    with pytest.raises(ReversalExceedsOriginal):
        reverse(captured.pk, amount=41)
    result = reverse(captured.pk)

    assert result.transaction.amount == 40
    assert totals("alice") == (100, 0, 100)
    assert_ledger_ok()


def test_a_credit_reversal_takes_from_its_own_lot_first():
    soon = timezone.now() + timedelta(days=1)
    credit("alice", 40, expires_at=soon)
    later = credit("alice", 60, expires_at=soon + timedelta(days=30)).transaction

    reverse(later.pk, amount=50)

    assert lots_of("alice") == [(40, soon), (10, soon + timedelta(days=30))]
    assert_ledger_ok()


def test_a_credit_reversal_takes_from_other_lots_when_its_own_was_spent():
    first = credit("alice", 40).transaction
    credit("alice", 60)
    debit("alice", 40)  # spends the first lot (oldest among never-expiring)

    reverse(first.pk)

    assert lots_of("alice") == [(20, None)]
    assert totals("alice") == (20, 0, 20)
    assert_ledger_ok()


def test_a_reversal_replays_and_conflicts_like_every_operation():
    original = credit("alice", 100).transaction
    first = reverse(original.pk, amount=10, external_id="r1", reason="refund")

    replay = reverse(original.pk, amount=10, external_id="r1", reason="refund")
    assert (replay.replayed, replay.transaction.pk) == (True, first.transaction.pk)
    with pytest.raises(IdempotencyConflict):
        reverse(original.pk, amount=11, external_id="r1", reason="refund")
    with pytest.raises(IdempotencyConflict):
        reverse(original.pk, amount=10, external_id="r1", reason="refund", allow_partial=True)
    assert totals("alice") == (90, 0, 90)
    assert_ledger_ok()


def test_connect_reverses_the_credit_posted_under_an_action_id():
    credit("alice", 100, source="connect", external_id="0b7e4f3c-5d1a-4f6e-9a8b-2c3d4e5f6a7b")
    debit("alice", 70, source="connect")

    result = transaction_reverse(
        source="connect", external_id="reversal-of-action", original_external_id="0b7e4f3c-5d1a-4f6e-9a8b-2c3d4e5f6a7b",
        allow_partial=True,
    )  # fmt: skip

    assert (result.transaction.amount, result.transaction.shortfall) == (30, 70)
    with pytest.raises(NotFound):
        transaction_reverse(source="connect", external_id="x", original_external_id="no-such-action")
    assert_ledger_ok()


def test_the_database_refuses_a_counter_beyond_the_original():
    original = credit("alice", 100).transaction
    with pytest.raises(IntegrityError), transaction.atomic():
        Transaction.objects.filter(pk=original.pk).update(reversed_amount=101)


def test_the_database_refuses_reversals_that_disagree_with_the_counter():
    original = credit("alice", 100).transaction
    reversal = reverse(original.pk, amount=10).transaction
    with pytest.raises(IntegrityError), transaction.atomic():
        # More reversed than the counter says: checked at commit, forced here.
        Transaction.objects.filter(pk=reversal.pk).update(amount=20)
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
