"""Random operation sequences against a plain in-memory model of the ledger (hypothesis, stateful).

Every step commits on PostgreSQL, so the commit-time triggers check each transaction too. The model
keeps balances, holds, lots (with their consumption order and expiry) and what each original has had
reversed; after each step the balances and every lot's remainder equal the model's, the open lots add
up to each balance, nothing is reversed beyond its original and no available is below zero; at the
end every invariant of verify_ledger holds.
"""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from points import services
from points.errors import (
    CaptureExceedsHold,
    HoldNotActive,
    IdempotencyConflict,
    InsufficientFunds,
    NotReversible,
    ReversalExceedsOriginal,
)
from points.expiry import lots_expire_due
from points.models import Account, Hold, Lot, Transaction
from points.reversals import transaction_reverse

from .conftest import assert_ledger_ok, totals

SOURCE = "property_service"
amounts = st.integers(min_value=1, max_value=300)
user_names = st.sampled_from(["ann", "ben", "cat"])


class LedgerModel(RuleBasedStateMachine):
    holds = Bundle("holds")
    refused = Bundle("refused")

    def __init__(self):
        super().__init__()
        self.prefix = uuid.uuid4().hex[:8]
        self.accounts: dict[str, list[int]] = {}  # user id -> [balance, held]
        self.hold_state: dict[str, dict] = {}  # hold id -> user, amount, active
        self.performed: list[tuple] = []  # (service, kwargs, transaction id) of every success
        self.counter = 0
        self.lots: dict = {}  # lot id -> {user_id, remaining, expires_at, created_at}
        self.uses: dict = {}  # debit/capture transaction id -> [[lot id, taken, returned], ...]
        self.originals: dict = {}  # credit/debit/capture transaction id -> {kind, user_id, amount, reversed}
        self.hold_transactions: list = []

    # --- helpers ---------------------------------------------------------------------------

    def user(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def external_id(self) -> str:
        self.counter += 1
        return f"{self.prefix}-{self.counter}"

    def model(self, user_id: str) -> list[int]:
        return self.accounts.setdefault(user_id, [0, 0])

    def available(self, user_id: str) -> int:
        balance, held = self.model(user_id)
        return balance - held

    def succeeded(self, service, kwargs, result) -> None:
        assert result.replayed is False
        self.performed.append((service, kwargs, result.transaction.pk))

    def lot_order(self, lot_id):
        lot = self.lots[lot_id]
        return (lot["expires_at"] is None, lot["expires_at"] or lot["created_at"], lot["created_at"], lot_id)

    def open_lots(self, user_id: str) -> list:
        mine = [lot_id for lot_id, lot in self.lots.items() if lot["user_id"] == user_id and lot["remaining"] > 0]
        return sorted(mine, key=self.lot_order)

    def take(self, user_id: str, amount: int, *, first=None, record=None) -> None:
        """Take from the model's lots as the ledger does: ``first`` lot, then soonest expiry first."""
        order = self.open_lots(user_id)
        if first in order:
            order = [first] + [lot_id for lot_id in order if lot_id != first]
        left = amount
        for lot_id in order:
            taken = min(left, self.lots[lot_id]["remaining"])
            self.lots[lot_id]["remaining"] -= taken
            left -= taken
            if record is not None and taken:
                self.uses.setdefault(record, []).append([lot_id, taken, 0])
            if left == 0:
                break
        assert left == 0, "the model's lots do not cover a take"

    def give_back(self, original, amount: int) -> None:
        uses = [use for use in self.uses.get(original, []) if use[2] < use[1]]
        uses.sort(key=lambda use: self.lot_order(use[0]), reverse=True)
        # The longest-lived first: never-expiring, then the latest expiry, the newest among equals.
        left = amount
        for use in uses:
            given = min(left, use[1] - use[2])
            use[2] += given
            self.lots[use[0]]["remaining"] += given
            left -= given
        assert left == 0

    def opened(self, result, user_id: str) -> None:
        lot = Lot.objects.get(transaction_id=result.transaction.pk)
        self.lots[lot.pk] = {
            "user_id": user_id, "remaining": lot.amount, "expires_at": lot.expires_at, "created_at": lot.created_at,
        }  # fmt: skip

    def spend(self, service, kwargs):
        """Debit or hold: refused exactly when the model says the user cannot afford it."""
        user_id, amount = kwargs["user_id"], kwargs["amount"]
        if amount > self.available(user_id):
            with pytest.raises(InsufficientFunds):
                service(**kwargs)
            return None
        result = service(**kwargs)
        self.succeeded(service, kwargs, result)
        return result

    # --- operations ------------------------------------------------------------------------

    @initialize(target=holds, opening=st.lists(st.integers(min_value=1, max_value=600), min_size=3, max_size=3))
    def open_accounts(self, opening):
        """Each sequence starts with funded users holding some points, so every rule has work to do."""
        hold_ids = []
        for name, amount in zip(("ann", "ben", "cat"), opening, strict=True):
            self.credit(name, amount)
            hold_ids.append(self.hold(name, (amount + 1) // 2))
        return multiple(*hold_ids)

    @rule(name=user_names, amount=amounts, expires_in_days=st.sampled_from([None, 1, 2, 30]))
    def credit(self, name, amount, expires_in_days=None):
        kwargs = dict(source=SOURCE, external_id=self.external_id(), user_id=self.user(name), amount=amount)
        if expires_in_days is not None:
            kwargs["expires_at"] = (timezone.now() + timedelta(days=expires_in_days)).replace(microsecond=0)
        result = services.account_credit(**kwargs)
        self.succeeded(services.account_credit, kwargs, result)
        self.model(kwargs["user_id"])[0] += amount
        self.opened(result, kwargs["user_id"])
        self.originals[result.transaction.pk] = {
            "kind": "credit", "user_id": kwargs["user_id"], "amount": amount, "reversed": 0,
        }  # fmt: skip

    @rule(target=refused, name=user_names, amount=amounts)
    def debit(self, name, amount):
        kwargs = dict(source=SOURCE, external_id=self.external_id(), user_id=self.user(name), amount=amount)
        result = self.spend(services.account_debit, kwargs)
        if result:
            self.debited(result, kwargs)
            return multiple()
        return (services.account_debit, kwargs)

    def debited(self, result, kwargs) -> None:
        user_id, amount = kwargs["user_id"], kwargs["amount"]
        self.model(user_id)[0] -= amount
        self.take(user_id, amount, record=result.transaction.pk)
        self.originals[result.transaction.pk] = {"kind": "debit", "user_id": user_id, "amount": amount, "reversed": 0}

    @rule(target=holds, name=user_names, amount=amounts)
    def hold(self, name, amount):
        kwargs = dict(source=SOURCE, external_id=self.external_id(), user_id=self.user(name), amount=amount)
        result = self.spend(services.hold_create, kwargs)
        if result is None:
            return multiple()
        self.model(kwargs["user_id"])[1] += amount
        hold_id = str(result.transaction.hold_id)
        self.hold_transactions.append(result.transaction.pk)
        self.hold_state[hold_id] = {"user_id": kwargs["user_id"], "amount": amount, "active": True}
        return hold_id

    @rule(hold_id=holds, how=st.sampled_from(["all", "part", "too_much"]), data=st.data())
    def capture(self, hold_id, how, data):
        state = self.hold_state[hold_id]
        held = state["amount"]
        amount = {
            "all": data.draw(st.sampled_from([None, held])),
            "part": data.draw(st.integers(min_value=1, max_value=held)),
            "too_much": data.draw(st.integers(min_value=held + 1, max_value=held + 100)),
        }[how]
        kwargs = dict(source=SOURCE, external_id=self.external_id(), hold_id=hold_id, amount=amount)
        if not state["active"]:
            with pytest.raises(HoldNotActive):
                services.hold_capture(**kwargs)
            return
        if how == "too_much":
            with pytest.raises(CaptureExceedsHold):
                services.hold_capture(**kwargs)
            return
        result = services.hold_capture(**kwargs)
        self.succeeded(services.hold_capture, kwargs, result)
        captured = held if amount is None else amount
        account = self.model(state["user_id"])
        account[0] -= captured
        account[1] -= held
        state["active"] = False
        assert result.transaction.amount == captured
        self.take(state["user_id"], captured, record=result.transaction.pk)
        self.originals[result.transaction.pk] = {
            "kind": "capture", "user_id": state["user_id"], "amount": captured, "reversed": 0,
        }  # fmt: skip

    @rule(hold_id=holds)
    def release(self, hold_id):
        state = self.hold_state[hold_id]
        kwargs = dict(source=SOURCE, external_id=self.external_id(), hold_id=hold_id)
        if not state["active"]:
            with pytest.raises(HoldNotActive):
                services.hold_release(**kwargs)
            return
        self.succeeded(services.hold_release, kwargs, services.hold_release(**kwargs))
        self.model(state["user_id"])[1] -= state["amount"]
        state["active"] = False

    @rule(hold_id=holds)
    def expire(self, hold_id):
        state = self.hold_state[hold_id]
        Hold.objects.filter(pk=hold_id, status="active").update(expires_at=timezone.now() - timedelta(seconds=1))
        expired = services.holds_expire_due()
        assert expired == (1 if state["active"] else 0)
        if state["active"]:
            self.model(state["user_id"])[1] -= state["amount"]
            state["active"] = False
            assert Transaction.objects.filter(hold_id=hold_id, kind="expiry").count() == 1

    @rule(data=st.data(), same_payload=st.booleans())
    def reuse_external_id(self, data, same_payload):
        """Same payload: the original transaction again, nothing posted. Another payload: a conflict."""
        if not self.performed:
            return
        service, kwargs, transaction_id = data.draw(st.sampled_from(self.performed))
        if same_payload or kwargs.get("amount") is None:
            result = service(**kwargs)
            assert result.replayed is True
            assert result.transaction.pk == transaction_id
            return
        with pytest.raises(IdempotencyConflict):
            service(**{**kwargs, "amount": kwargs["amount"] + 1})

    @rule(attempt=consumes(refused))
    def retry_refused(self, attempt):
        """A refused external_id was not used up: the same request is judged afresh."""
        service, kwargs = attempt
        result = self.spend(service, kwargs)
        if result:
            self.debited(result, kwargs)

    @rule(data=st.data(), how=st.sampled_from(["rest", "part", "too_much"]), allow_partial=st.booleans())
    def reverse(self, data, how, allow_partial):
        """A credit, debit or capture reversed in full or in part, as the model says it must be."""
        if not self.originals:
            return
        # In the order they were made (ids are random: drawing by them would not replay).
        original_id = data.draw(st.sampled_from(list(self.originals)))
        original = self.originals[original_id]
        user_id, unreversed = original["user_id"], original["amount"] - original["reversed"]
        amount = {
            "rest": None,
            "part": data.draw(st.integers(min_value=1, max_value=max(1, unreversed))),
            "too_much": unreversed + data.draw(st.integers(min_value=1, max_value=50)),
        }[how]
        kwargs = dict(
            source=SOURCE, external_id=self.external_id(), transaction_id=original_id, amount=amount,
            allow_partial=allow_partial,
        )  # fmt: skip
        requested = unreversed if amount is None else amount
        if requested == 0 or requested > unreversed:
            with pytest.raises(ReversalExceedsOriginal):
                transaction_reverse(**kwargs)
            return
        available = self.available(user_id)
        if original["kind"] == "credit" and requested > available and not allow_partial:
            with pytest.raises(InsufficientFunds):
                transaction_reverse(**kwargs)
            return
        result = transaction_reverse(**kwargs)
        self.succeeded(transaction_reverse, kwargs, result)
        if original["kind"] == "credit":
            taken = min(requested, available)
            lot_id = Lot.objects.filter(transaction_id=original_id).values_list("pk", flat=True).get()
            self.take(user_id, taken, first=lot_id)
            self.model(user_id)[0] -= taken
        else:
            taken = requested
            self.give_back(original_id, taken)
            self.model(user_id)[0] += taken
        original["reversed"] += taken
        assert (result.transaction.amount, result.transaction.shortfall) == (taken, requested - taken)

    @rule(data=st.data())
    def reverse_what_cannot_be(self, data):
        if not self.hold_transactions:
            return
        transaction_id = data.draw(st.sampled_from(self.hold_transactions))
        with pytest.raises(NotReversible):
            transaction_reverse(source=SOURCE, external_id=self.external_id(), transaction_id=transaction_id)

    @rule(data=st.data(), seconds_ago=st.integers(min_value=1, max_value=3600))
    def time_passes_for_a_lot(self, data, seconds_ago):
        """A dated open lot falls due (as if its day had come)."""
        dated = [lot_id for lot_id, lot in self.lots.items() if lot["expires_at"] and lot["remaining"] > 0]
        if not dated:
            return
        lot_id = data.draw(st.sampled_from(dated))
        moment = timezone.now() - timedelta(seconds=seconds_ago)
        Lot.objects.filter(pk=lot_id).update(expires_at=moment)
        self.lots[lot_id]["expires_at"] = moment

    @rule()
    def expiry_run(self):
        """Each due lot loses what is left of it, but what active holds need; never twice."""
        now = timezone.now()
        due = sorted(
            (lot["expires_at"], lot_id) for lot_id, lot in self.lots.items()
            if lot["expires_at"] and lot["expires_at"] <= now and lot["remaining"] > 0
        )  # fmt: skip
        expected = 0
        for _, lot_id in due:
            lot = self.lots[lot_id]
            expired = min(lot["remaining"], self.available(lot["user_id"]))
            if expired > 0:
                lot["remaining"] -= expired
                self.model(lot["user_id"])[0] -= expired
                expected += expired
        run = lots_expire_due(now=now)
        assert run.skipped == 0
        # The run also finishes lots earlier sequences (other users) left due; this sequence's own
        # expiry is checked lot by lot by the invariants.
        own = Transaction.objects.filter(kind="points_expiry", account__user_id__startswith=self.prefix)
        assert sum(own.filter(created_at__gte=now).values_list("amount", flat=True)) == expected

    # --- checks ----------------------------------------------------------------------------

    @invariant()
    def balances_match_the_model(self):
        for user_id, (balance, held) in self.accounts.items():
            assert totals(user_id) == (balance, held, balance - held)
            assert held >= 0 and balance - held >= 0

    @invariant()
    def lots_match_the_model_and_add_up_to_the_balance(self):
        stored = dict(Lot.objects.filter(pk__in=list(self.lots)).values_list("pk", "remaining"))
        assert stored == {lot_id: lot["remaining"] for lot_id, lot in self.lots.items()}
        for user_id in self.accounts:
            account = Account.objects.get(user_id=user_id)
            open_total = sum(lot["remaining"] for lot in self.lots.values() if lot["user_id"] == user_id)
            assert open_total == account.balance
            assert account.balance - account.held >= 0

    @invariant()
    def never_over_reversed(self):
        counted = dict(Transaction.objects.filter(pk__in=list(self.originals)).values_list("pk", "reversed_amount"))
        for original_id, original in self.originals.items():
            assert counted[original_id] == original["reversed"] <= original["amount"]

    def teardown(self):
        assert_ledger_ok()


@pytest.mark.django_db(transaction=True)
def test_random_operation_sequences_match_the_model():
    run_state_machine_as_test(
        LedgerModel,
        settings=settings(
            max_examples=30,
            stateful_step_count=30,
            deadline=None,
            database=None,
            # A failing sequence is reported as found: shrinking it can take minutes of database work.
            phases=[Phase.explicit, Phase.reuse, Phase.generate],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
