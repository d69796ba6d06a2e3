"""Shared helpers of the ledger tests: ledger snapshots, invariant checks and service shortcuts."""

import itertools

import pytest

from points import services
from points.models import Account, Entry, Hold, Transaction
from points.verification import ledger_verify

SOURCE = "quest_service"

_ids = itertools.count(1)


def new_external_id(prefix: str = "op") -> str:
    return f"{prefix}-{next(_ids)}"


def ledger_snapshot() -> dict:
    """Everything a refused operation must leave untouched: row counts, every account and hold."""
    return {
        "transactions": Transaction.objects.count(),
        "entries": Entry.objects.count(),
        "holds": list(
            Hold.objects.order_by("pk").values_list("pk", "status", "captured_amount", "released_amount", "expires_at")
        ),
        "accounts": list(Account.objects.order_by("pk").values_list("pk", "user_id", "code", "balance", "held")),
    }


def totals(user_id: str) -> tuple[int, int, int]:
    """(balance, held, available) of a user straight from the database; zeros for an unknown user."""
    row = Account.objects.filter(user_id=user_id).values_list("balance", "held").first()
    balance, held = row or (0, 0)
    return balance, held, balance - held


def assert_ledger_ok() -> None:
    broken = {check.name: check.offenders for check in ledger_verify() if not check.ok}
    assert broken == {}


def credit(user_id: str, amount: int, *, source: str = SOURCE, external_id: str | None = None, **kwargs):
    return services.account_credit(
        source=source, external_id=external_id or new_external_id("credit"), user_id=user_id, amount=amount, **kwargs
    )


def debit(user_id: str, amount: int, *, source: str = SOURCE, external_id: str | None = None, **kwargs):
    return services.account_debit(
        source=source, external_id=external_id or new_external_id("debit"), user_id=user_id, amount=amount, **kwargs
    )


def hold(user_id: str, amount: int, *, source: str = SOURCE, external_id: str | None = None, **kwargs):
    return services.hold_create(
        source=source, external_id=external_id or new_external_id("hold"), user_id=user_id, amount=amount, **kwargs
    )


def capture(hold_id, *, amount: int | None = None, source: str = SOURCE, external_id: str | None = None):
    return services.hold_capture(
        source=source, external_id=external_id or new_external_id("capture"), hold_id=hold_id, amount=amount
    )


def release(hold_id, *, source: str = SOURCE, external_id: str | None = None):
    return services.hold_release(source=source, external_id=external_id or new_external_id("release"), hold_id=hold_id)


@pytest.fixture
def snapshot():
    return ledger_snapshot
