"""The ledger's write services (SPEC §9): every operation, every refusal, idempotency and expiry."""

import uuid
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.utils import timezone

from points import selectors, services
from points.errors import (
    CaptureExceedsHold,
    HoldNotActive,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidRequest,
    NotFound,
)
from points.models import Account, Entry, Hold, SystemAccount, Transaction

from .conftest import SOURCE, assert_ledger_ok, capture, credit, debit, hold, release, totals

pytestmark = pytest.mark.django_db


def entries_of(txn) -> list[tuple[str, str, int]]:
    """(account name, part, amount) of a transaction's legs, sorted for comparison."""
    return sorted((str(entry.account), entry.part, entry.amount) for entry in Entry.objects.filter(transaction=txn))


def system_total(code: str) -> int:
    return sum(Entry.objects.filter(account__code=code).values_list("amount", flat=True))


# --- credit ----------------------------------------------------------------------------------


def test_credit_adds_points_with_balanced_entries():
    result = credit("alice", 150, reason="quest done", metadata={"quest": 7})

    assert result.replayed is False
    txn = result.transaction
    assert (txn.kind, txn.amount, txn.reason, txn.metadata, txn.source) == (
        "credit", 150, "quest done", {"quest": 7}, SOURCE,
    )  # fmt: skip
    assert (txn.balance_after, txn.held_after, txn.available_after) == (150, 0, 150)
    assert entries_of(txn) == [("[points_issued]", "available", -150), ("alice", "available", 150)]
    assert totals("alice") == (150, 0, 150)
    assert Account.objects.get(user_id="alice").kind == Account.Kind.USER
    assert_ledger_ok()


def test_credits_accumulate_and_stamp_the_balance_after_each():
    first = credit("alice", 100).transaction
    second = credit("alice", 25).transaction

    assert (first.balance_after, second.balance_after) == (100, 125)
    assert totals("alice") == (125, 0, 125)
    assert system_total(SystemAccount.ISSUED) == -125


def test_credit_replay_with_the_same_payload_returns_the_original_transaction(snapshot):
    original = credit("alice", 100, external_id="c-1", reason="r", metadata={"a": 1})
    credit("alice", 5)
    before = snapshot()

    replay = credit("alice", 100, external_id="c-1", reason="r", metadata={"a": 1})

    assert replay.replayed is True
    assert replay.transaction.pk == original.transaction.pk
    assert replay.transaction.balance_after == 100  # the original result, not today's balance
    assert snapshot() == before


@pytest.mark.parametrize(
    "changed",
    [{"amount": 101}, {"user_id": "bob"}, {"reason": "other"}, {"metadata": {"a": 2}}],
    ids=["amount", "user_id", "reason", "metadata"],
)
def test_credit_reusing_an_external_id_with_a_different_payload_conflicts(changed, snapshot):
    payload = {"user_id": "alice", "amount": 100, "reason": "r", "metadata": {"a": 1}}
    services.account_credit(source=SOURCE, external_id="c-1", **payload)
    before = snapshot()

    with pytest.raises(IdempotencyConflict) as refused:
        services.account_credit(source=SOURCE, external_id="c-1", **{**payload, **changed})

    assert refused.value.status_code == 409
    assert refused.value.details == {"external_id": "c-1"}
    assert snapshot() == before


def test_an_external_id_used_by_one_operation_conflicts_for_another(snapshot):
    credit("alice", 100, external_id="shared")
    before = snapshot()

    with pytest.raises(IdempotencyConflict):
        debit("alice", 100, external_id="shared")
    with pytest.raises(IdempotencyConflict):
        hold("alice", 100, external_id="shared")

    assert snapshot() == before


def test_external_ids_are_namespaced_per_calling_client():
    first = credit("alice", 100, external_id="same", source="quest_service")
    second = credit("alice", 100, external_id="same", source="voucher_service")

    assert first.transaction.pk != second.transaction.pk
    assert not second.replayed
    assert totals("alice") == (200, 0, 200)


def test_metadata_and_reason_default_to_empty():
    txn = credit("alice", 1).transaction
    txn.refresh_from_db()
    assert (txn.reason, txn.metadata) == ("", {})
    # Omitted and explicit defaults are the same request.
    assert (
        credit("bob", 1, external_id="d").transaction.pk
        == credit("bob", 1, external_id="d", reason="", metadata={}).transaction.pk
    )


# --- debit -----------------------------------------------------------------------------------


def test_debit_spends_points_with_balanced_entries():
    credit("alice", 100)

    result = debit("alice", 40, reason="shop")

    txn = result.transaction
    assert (txn.kind, txn.amount, txn.balance_after, txn.held_after) == ("debit", 40, 60, 0)
    assert entries_of(txn) == [("[points_spent]", "available", 40), ("alice", "available", -40)]
    assert totals("alice") == (60, 0, 60)
    assert_ledger_ok()


def test_debit_of_the_whole_available_leaves_zero():
    credit("alice", 100)
    debit("alice", 100)
    assert totals("alice") == (0, 0, 0)


def test_debit_beyond_available_is_refused_and_changes_nothing(snapshot):
    credit("alice", 100)
    before = snapshot()

    with pytest.raises(InsufficientFunds) as refused:
        debit("alice", 101, external_id="d-1")

    assert refused.value.status_code == 422
    assert refused.value.code == "insufficient_funds"
    assert refused.value.details == {"available": 100, "requested": 101}
    assert snapshot() == before


def test_refused_debit_does_not_use_up_its_external_id():
    credit("alice", 50)
    with pytest.raises(InsufficientFunds):
        debit("alice", 80, external_id="d-1")

    credit("alice", 50)
    retried = debit("alice", 80, external_id="d-1")

    assert retried.replayed is False
    assert totals("alice") == (20, 0, 20)
    assert Transaction.objects.filter(external_id="d-1").count() == 1


def test_debit_of_an_unknown_user_is_refused_without_creating_an_account(snapshot):
    before = snapshot()
    with pytest.raises(InsufficientFunds):
        debit("nobody", 1)
    assert snapshot() == before
    assert not Account.objects.filter(user_id="nobody").exists()


def test_debit_cannot_spend_held_points(snapshot):
    credit("alice", 100)
    hold("alice", 70)
    before = snapshot()

    with pytest.raises(InsufficientFunds) as refused:
        debit("alice", 31)

    assert refused.value.details == {"available": 30, "requested": 31}
    assert snapshot() == before
    debit("alice", 30)
    assert totals("alice") == (70, 70, 0)


def test_debit_replay_returns_the_original_even_when_it_could_no_longer_be_afforded():
    credit("alice", 100)
    original = debit("alice", 100, external_id="d-1")

    replay = debit("alice", 100, external_id="d-1")

    assert replay.replayed is True
    assert replay.transaction.pk == original.transaction.pk
    assert totals("alice") == (0, 0, 0)


# --- hold ------------------------------------------------------------------------------------


def test_hold_moves_available_to_held_with_default_expiry_of_fifteen_minutes():
    credit("alice", 100)

    result = hold("alice", 30, reason="checkout")

    txn = result.transaction
    held = Hold.objects.get(pk=txn.hold_id)
    assert (txn.kind, txn.amount, txn.balance_after, txn.held_after) == ("hold", 30, 100, 30)
    assert (held.status, held.amount, held.source, held.account.user_id) == ("active", 30, SOURCE, "alice")
    assert held.expires_at == txn.created_at + timedelta(minutes=15)
    assert entries_of(txn) == [("alice", "available", -30), ("alice", "held", 30)]
    assert totals("alice") == (100, 30, 70)
    assert_ledger_ok()


def test_hold_with_custom_expiry():
    credit("alice", 100)
    txn = hold("alice", 30, expires_in=90).transaction
    assert Hold.objects.get(pk=txn.hold_id).expires_at == txn.created_at + timedelta(seconds=90)


def test_hold_beyond_available_is_refused_and_changes_nothing(snapshot):
    credit("alice", 100)
    hold("alice", 60)
    before = snapshot()

    with pytest.raises(InsufficientFunds) as refused:
        hold("alice", 41, external_id="h-1")

    assert refused.value.details == {"available": 40, "requested": 41}
    assert snapshot() == before
    # The refused external_id is still free.
    assert hold("alice", 40, external_id="h-1").replayed is False
    assert totals("alice") == (100, 100, 0)


def test_hold_replay_returns_the_same_hold(snapshot):
    credit("alice", 100)
    original = hold("alice", 30, external_id="h-1", expires_in=60)
    before = snapshot()

    replay = hold("alice", 30, external_id="h-1", expires_in=60)

    assert replay.replayed is True
    assert replay.transaction.hold_id == original.transaction.hold_id
    assert snapshot() == before
    with pytest.raises(IdempotencyConflict):
        hold("alice", 30, external_id="h-1", expires_in=61)


# --- capture ---------------------------------------------------------------------------------


def test_full_capture_spends_the_held_points():
    credit("alice", 100)
    hold_id = hold("alice", 30).transaction.hold_id

    result = capture(hold_id)

    txn = result.transaction
    settled = Hold.objects.get(pk=hold_id)
    assert (txn.kind, txn.amount, txn.hold_id, txn.balance_after, txn.held_after) == ("capture", 30, hold_id, 70, 0)
    assert (settled.status, settled.captured_amount, settled.released_amount) == ("captured", 30, 0)
    assert settled.closed_at is not None
    assert entries_of(txn) == [("[points_spent]", "available", 30), ("alice", "held", -30)]
    assert totals("alice") == (70, 0, 70)
    assert_ledger_ok()


def test_partial_capture_releases_the_rest():
    credit("alice", 100)
    hold_id = hold("alice", 30).transaction.hold_id

    txn = capture(hold_id, amount=12).transaction

    settled = Hold.objects.get(pk=hold_id)
    assert (txn.amount, txn.balance_after, txn.held_after) == (12, 88, 0)
    assert (settled.status, settled.captured_amount, settled.released_amount) == ("captured", 12, 18)
    assert entries_of(txn) == [("[points_spent]", "available", 12), ("alice", "available", 18), ("alice", "held", -30)]
    assert totals("alice") == (88, 0, 88)
    assert_ledger_ok()


def test_capture_of_one_hold_leaves_other_holds_held():
    credit("alice", 100)
    first = hold("alice", 30).transaction.hold_id
    hold("alice", 50)

    capture(first, amount=10)

    assert totals("alice") == (90, 50, 40)
    assert_ledger_ok()


def test_capture_exceeding_the_hold_is_refused_and_does_not_use_up_its_external_id(snapshot):
    credit("alice", 100)
    hold_id = hold("alice", 30).transaction.hold_id
    before = snapshot()

    with pytest.raises(CaptureExceedsHold) as refused:
        capture(hold_id, amount=31, external_id="cap-1")

    assert refused.value.status_code == 422
    assert refused.value.details == {"held": 30, "requested": 31}
    assert snapshot() == before
    assert capture(hold_id, amount=30, external_id="cap-1").replayed is False


@pytest.mark.parametrize("settle", ["captured", "released", "expired", "expired_unswept"])
@pytest.mark.parametrize("operation", ["capture", "release"])
def test_a_hold_no_longer_active_cannot_be_captured_or_released(settle, operation, snapshot):
    credit("alice", 100)
    hold_id = hold("alice", 30).transaction.hold_id
    if settle == "captured":
        capture(hold_id, amount=10)
    elif settle == "released":
        release(hold_id)
    else:
        Hold.objects.filter(pk=hold_id).update(expires_at=timezone.now() - timedelta(seconds=1))
        if settle == "expired":
            assert services.holds_expire_due() == 1
    before = snapshot()

    with pytest.raises(HoldNotActive) as refused:
        capture(hold_id, external_id="late") if operation == "capture" else release(hold_id, external_id="late")

    assert refused.value.status_code == 422
    assert refused.value.details == {"hold_id": str(hold_id)}
    assert snapshot() == before
    assert not Transaction.objects.filter(external_id="late").exists()


def test_capture_replay_returns_the_original_after_the_hold_is_settled(snapshot):
    credit("alice", 100)
    hold_id = hold("alice", 30).transaction.hold_id
    original = capture(hold_id, amount=20, external_id="cap-1")
    before = snapshot()

    replay = capture(hold_id, amount=20, external_id="cap-1")

    assert replay.replayed is True
    assert replay.transaction.pk == original.transaction.pk
    assert snapshot() == before
    with pytest.raises(IdempotencyConflict):
        capture(hold_id, amount=21, external_id="cap-1")


def test_another_clients_hold_is_not_found(snapshot):
    credit("alice", 100)
    hold_id = hold("alice", 30, source="shop").transaction.hold_id
    before = snapshot()

    with pytest.raises(NotFound) as refused:
        capture(hold_id, source="quest_service")
    with pytest.raises(NotFound):
        release(hold_id, source="quest_service")

    assert refused.value.status_code == 404
    assert snapshot() == before
    assert Hold.objects.get(pk=hold_id).status == "active"


@pytest.mark.parametrize("hold_id", [uuid.uuid4(), "not-a-uuid", None])
def test_an_unknown_hold_is_not_found(hold_id, snapshot):
    before = snapshot()
    with pytest.raises(NotFound):
        capture(hold_id)
    with pytest.raises(NotFound):
        release(hold_id)
    assert snapshot() == before


# --- release ---------------------------------------------------------------------------------


def test_release_returns_the_held_points_to_available():
    credit("alice", 100)
    hold_id = hold("alice", 30).transaction.hold_id

    txn = release(hold_id).transaction

    settled = Hold.objects.get(pk=hold_id)
    assert (txn.kind, txn.amount, txn.hold_id, txn.balance_after, txn.held_after) == ("release", 30, hold_id, 100, 0)
    assert (settled.status, settled.captured_amount, settled.released_amount) == ("released", 0, 30)
    assert entries_of(txn) == [("alice", "available", 30), ("alice", "held", -30)]
    assert totals("alice") == (100, 0, 100)
    assert_ledger_ok()


def test_release_replay_returns_the_original(snapshot):
    credit("alice", 100)
    hold_id = hold("alice", 30).transaction.hold_id
    original = release(hold_id, external_id="rel-1")
    before = snapshot()

    replay = release(hold_id, external_id="rel-1")

    assert (replay.replayed, replay.transaction.pk) == (True, original.transaction.pk)
    assert snapshot() == before


# --- expiry ----------------------------------------------------------------------------------


def _expire_now(hold_id) -> None:
    Hold.objects.filter(pk=hold_id).update(expires_at=timezone.now() - timedelta(seconds=1))


def test_holds_expire_due_releases_only_expired_holds_with_an_expiry_transaction():
    credit("alice", 100)
    due = hold("alice", 30).transaction.hold_id
    not_due = hold("alice", 20).transaction.hold_id
    _expire_now(due)

    assert services.holds_expire_due() == 1

    expired = Hold.objects.get(pk=due)
    assert (expired.status, expired.released_amount, expired.captured_amount) == ("expired", 30, 0)
    txn = Transaction.objects.get(hold_id=due, kind="expiry")
    assert (txn.amount, txn.balance_after, txn.held_after, txn.source) == (30, 100, 20, services.SYSTEM_SOURCE)
    assert entries_of(txn) == [("alice", "available", 30), ("alice", "held", -30)]
    assert Hold.objects.get(pk=not_due).status == "active"
    assert totals("alice") == (100, 20, 80)
    assert services.holds_expire_due() == 0
    assert Transaction.objects.filter(kind="expiry").count() == 1
    assert_ledger_ok()


def test_hold_expire_ignores_a_hold_that_is_not_due_or_already_settled():
    credit("alice", 100)
    active = hold("alice", 30).transaction.hold_id
    settled = hold("alice", 30).transaction.hold_id
    release(settled)
    _expire_now(settled)

    assert services.hold_expire(hold_id=active) is None
    assert services.hold_expire(hold_id=settled) is None
    assert not Transaction.objects.filter(kind="expiry").exists()


def test_expire_holds_command_expires_due_holds():
    credit("alice", 100)
    for _ in range(3):
        _expire_now(hold("alice", 10).transaction.hold_id)
    out = StringIO()

    call_command("expire_holds", stdout=out)

    assert "Expired 3 hold(s)." in out.getvalue()
    assert Transaction.objects.filter(kind="expiry").count() == 3
    assert totals("alice") == (100, 0, 100)
    assert_ledger_ok()


def test_expiry_in_batches_expires_every_due_hold():
    credit("alice", 100)
    for _ in range(5):
        _expire_now(hold("alice", 10).transaction.hold_id)

    assert services.holds_expire_due(batch_size=2) == 5
    assert totals("alice") == (100, 0, 100)


# --- adjustments -----------------------------------------------------------------------------


@pytest.fixture
def staff_user(db):
    return get_user_model().objects.create_user(username="finance", password="x", is_staff=True)


def test_adjustment_posts_a_compensating_transaction_against_the_adjustments_account(staff_user):
    credit("alice", 100)

    up = services.account_adjust(user_id="alice", amount=15, reason="goodwill", staff_user=staff_user)
    down = services.account_adjust(user_id="alice", amount=-40, reason="fraud", staff_user=staff_user)

    assert (up.transaction.kind, up.transaction.amount, up.transaction.created_by) == ("adjustment", 15, staff_user)
    assert up.transaction.metadata == {"staff_user": "finance", "direction": "credit"}
    assert down.transaction.metadata == {"staff_user": "finance", "direction": "debit"}
    assert (down.transaction.amount, down.transaction.balance_after) == (40, 75)
    assert entries_of(down.transaction) == [("[adjustments]", "available", 40), ("alice", "available", -40)]
    assert totals("alice") == (75, 0, 75)
    assert_ledger_ok()


def test_adjustment_cannot_take_available_below_zero(staff_user, snapshot):
    credit("alice", 10)
    before = snapshot()
    with pytest.raises(InsufficientFunds):
        services.account_adjust(user_id="alice", amount=-11, reason="fraud", staff_user=staff_user)
    assert snapshot() == before


@pytest.mark.parametrize(
    "amount, reason", [(0, "why"), (5, ""), (5, "   "), (True, "why"), (1.5, "why"), (-(10**12) - 1, "why")]
)
def test_adjustment_needs_an_amount_and_a_reason(staff_user, snapshot, amount, reason):
    before = snapshot()
    with pytest.raises(ValueError):
        services.account_adjust(user_id="alice", amount=amount, reason=reason, staff_user=staff_user)
    assert snapshot() == before


def test_adjustment_with_an_external_id_is_idempotent(staff_user):
    first = services.account_adjust(user_id="alice", amount=5, reason="r", staff_user=staff_user, external_id="adj-1")
    again = services.account_adjust(user_id="alice", amount=5, reason="r", staff_user=staff_user, external_id="adj-1")
    assert (again.replayed, again.transaction.pk) == (True, first.transaction.pk)
    assert totals("alice") == (5, 0, 5)


# --- amounts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [0, -5, 10**12 + 1, True, 1.5, "10", None])
@pytest.mark.parametrize("operation", ["credit", "debit", "hold"])
def test_services_refuse_amounts_that_are_not_integers_in_range(operation, amount, snapshot):
    credit("alice", 100)
    before = snapshot()
    call = {"credit": credit, "debit": debit, "hold": hold}[operation]

    with pytest.raises(InvalidRequest) as refused:
        call("alice", amount)

    assert (refused.value.status_code, refused.value.code) == (400, "validation_error")
    assert "amount" in refused.value.details
    assert snapshot() == before


@pytest.mark.parametrize("amount", [0, -1, True, 2.0, "5"])
def test_capture_refuses_amounts_that_are_not_positive_integers(amount, snapshot):
    credit("alice", 100)
    hold_id = hold("alice", 30).transaction.hold_id
    before = snapshot()

    with pytest.raises(InvalidRequest):
        capture(hold_id, amount=amount)

    assert snapshot() == before


@pytest.mark.parametrize("expires_in", [0, -1, 1.5, True])
def test_hold_refuses_an_expiry_that_is_not_a_positive_integer(expires_in, snapshot):
    credit("alice", 100)
    before = snapshot()
    with pytest.raises(InvalidRequest):
        hold("alice", 10, expires_in=expires_in)
    assert snapshot() == before


@pytest.mark.parametrize(
    "field, value",
    [
        ("user_id", None),
        ("user_id", ""),
        ("user_id", "u" * 101),
        ("user_id", "nul\x00"),
        ("external_id", ""),
        ("external_id", "e" * 201),
        ("external_id", 42),
        ("reason", "r" * 201),
        ("reason", None),
        ("metadata", ["not", "an", "object"]),
        ("metadata", {"text": "nul\x00"}),
        ("metadata", {"key\x00": 1}),
        ("metadata", {"lone": "\ud800"}),
    ],
)
def test_services_refuse_text_the_ledger_cannot_store(field, value, snapshot):
    credit("alice", 100)
    before = snapshot()
    kwargs = {"source": SOURCE, "external_id": "op", "user_id": "alice", "amount": 5, field: value}

    for service in (services.account_credit, services.account_debit, services.hold_create):
        with pytest.raises(InvalidRequest) as refused:
            service(**kwargs)
        assert list(refused.value.details) == [field]

    assert snapshot() == before


@pytest.mark.parametrize("user_id, reason", [("alice", "r" * 201), ("", "why"), ("nul\x00", "why"), ("alice", "x\x00")])
def test_adjustment_refuses_text_the_ledger_cannot_store(staff_user, snapshot, user_id, reason):
    before = snapshot()
    with pytest.raises(ValueError):
        services.account_adjust(user_id=user_id, amount=5, reason=reason, staff_user=staff_user)
    assert snapshot() == before


@pytest.mark.parametrize(
    "metadata", [{"nan": float("nan")}, {"inf": float("-inf")}, {"when": timezone.now()}, {"set": {1, 2}}]
)
def test_services_refuse_metadata_that_is_not_json(metadata, snapshot):
    before = snapshot()
    with pytest.raises(InvalidRequest) as refused:
        credit("alice", 1, metadata=metadata)
    assert list(refused.value.details) == ["metadata"]
    assert snapshot() == before


def test_the_largest_amount_is_accepted():
    credit("alice", 10**12)
    assert totals("alice") == (10**12, 0, 10**12)


# --- reads -----------------------------------------------------------------------------------


def test_account_totals_are_zero_for_an_unknown_user():
    assert selectors.account_totals(user_id="ghost") == {
        "user_id": "ghost", "balance": 0, "held": 0, "available": 0, "expiring_soon": 0, "next_expiry": None,
    }  # fmt: skip
    assert not Account.objects.filter(user_id="ghost").exists()


def test_account_totals_report_balance_held_and_available():
    credit("alice", 100)
    hold("alice", 30)
    assert selectors.account_totals(user_id="alice") == {
        "user_id": "alice",
        "balance": 100,
        "held": 30,
        "available": 70,
        "expiring_soon": 0,
        "next_expiry": None,
    }


def test_account_transactions_are_the_users_own():
    credit("alice", 100)
    credit("bob", 5)
    hold("alice", 10)
    kinds = sorted(selectors.account_transactions(user_id="alice").values_list("kind", flat=True))
    assert kinds == ["credit", "hold"]


def test_every_operation_mix_keeps_the_ledger_verified():
    credit("alice", 500)
    credit("bob", 50)
    debit("alice", 20)
    first = hold("alice", 100).transaction.hold_id
    second = hold("alice", 100).transaction.hold_id
    third = hold("bob", 50).transaction.hold_id
    capture(first, amount=60)
    release(second)
    _expire_now(third)
    services.holds_expire_due()

    assert totals("alice") == (420, 0, 420)
    assert totals("bob") == (50, 0, 50)
    assert system_total(SystemAccount.ISSUED) == -550
    assert system_total(SystemAccount.SPENT) == 80
    assert_ledger_ok()
