"""Random operation sequences against a plain in-memory model of the ledger (hypothesis, stateful).

Every step commits on PostgreSQL, so the commit-time balance trigger checks each transaction too; after
each step the balances of every user equal the model's, and at the end every invariant holds.
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
from points.errors import CaptureExceedsHold, HoldNotActive, IdempotencyConflict, InsufficientFunds
from points.models import Hold, Transaction

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

    @rule(name=user_names, amount=amounts)
    def credit(self, name, amount):
        kwargs = dict(source=SOURCE, external_id=self.external_id(), user_id=self.user(name), amount=amount)
        self.succeeded(services.account_credit, kwargs, services.account_credit(**kwargs))
        self.model(kwargs["user_id"])[0] += amount

    @rule(target=refused, name=user_names, amount=amounts)
    def debit(self, name, amount):
        kwargs = dict(source=SOURCE, external_id=self.external_id(), user_id=self.user(name), amount=amount)
        if self.spend(services.account_debit, kwargs):
            self.model(kwargs["user_id"])[0] -= amount
            return multiple()
        return (services.account_debit, kwargs)

    @rule(target=holds, name=user_names, amount=amounts)
    def hold(self, name, amount):
        kwargs = dict(source=SOURCE, external_id=self.external_id(), user_id=self.user(name), amount=amount)
        result = self.spend(services.hold_create, kwargs)
        if result is None:
            return multiple()
        self.model(kwargs["user_id"])[1] += amount
        hold_id = str(result.transaction.hold_id)
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
        if self.spend(service, kwargs):
            self.model(kwargs["user_id"])[0] -= kwargs["amount"]

    # --- checks ----------------------------------------------------------------------------

    @invariant()
    def balances_match_the_model(self):
        for user_id, (balance, held) in self.accounts.items():
            assert totals(user_id) == (balance, held, balance - held)
            assert held >= 0 and balance - held >= 0

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
