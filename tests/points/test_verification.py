"""``verify_ledger`` / ``ledger_verify()``: passes on a good ledger, names each broken invariant."""

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path
from urllib.parse import quote

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from points.models import Account, Hold
from points.verification import ledger_verify

from .conftest import capture, credit, debit, hold, release

pytestmark = pytest.mark.django_db

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ALL_CHECKS = {
    "transactions_balanced",
    "lots_match_balance",
    "lots_within_amount",
    "reversals_within_original",
    "transactions_have_entries",
    "balances_match_entries",
    "held_matches_entries",
    "held_matches_active_holds",
    "available_not_negative",
    "holds_settled",
    "hold_transactions_agree",
    "ledger_balanced",
}


def busy_ledger() -> None:
    credit("alice", 500)
    credit("bob", 100)
    debit("alice", 50)
    capture(hold("alice", 100).transaction.hold_id, amount=40)
    release(hold("bob", 60).transaction.hold_id)
    hold("alice", 70)


def broken_checks() -> set[str]:
    return {check.name for check in ledger_verify() if not check.ok}


def raw_sql(sql: str, params=()) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def test_every_check_passes_on_a_good_ledger():
    busy_ledger()
    checks = ledger_verify()
    assert {check.name for check in checks} == ALL_CHECKS
    assert [check.name for check in checks if not check.ok] == []


def test_verify_ledger_command_succeeds_on_a_good_ledger():
    busy_ledger()
    out = StringIO()
    call_command("verify_ledger", stdout=out)
    assert "Ledger verified: all invariants hold." in out.getvalue()
    assert "BROKEN" not in out.getvalue()


@pytest.mark.ledger_broken  # tampers with the ledger on purpose: the check must catch it
def test_a_tampered_balance_is_named_by_the_command():
    busy_ledger()
    raw_sql("UPDATE points_account SET balance = balance + 7 WHERE user_id = %s", ["alice"])
    out = StringIO()

    with pytest.raises(CommandError) as failed:
        call_command("verify_ledger", stdout=out)

    assert "balances_match_entries" in str(failed.value)
    assert "BROKEN balances_match_entries" in out.getvalue()
    assert "alice: balance 417 != entries 410" in out.getvalue()
    # The balance no longer matches the lots either.
    assert broken_checks() == {"balances_match_entries", "lots_match_balance"}


@pytest.mark.ledger_broken  # tampers with the ledger on purpose: the check must catch it
def test_a_tampered_held_amount_is_caught():
    busy_ledger()
    raw_sql("UPDATE points_account SET held = held + 5 WHERE user_id = %s", ["alice"])
    assert broken_checks() == {"held_matches_entries", "held_matches_active_holds"}


@pytest.mark.ledger_broken  # tampers with the ledger on purpose: the check must catch it
def test_a_hold_closed_without_a_settling_transaction_is_caught():
    credit("alice", 100)
    hold_id = hold("alice", 30).transaction.hold_id
    Hold.objects.filter(pk=hold_id).update(status=Hold.Status.RELEASED, released_amount=30)
    assert broken_checks() == {"holds_settled", "hold_transactions_agree", "held_matches_active_holds"}


@pytest.mark.ledger_broken  # tampers with the ledger on purpose: the check must catch it
def test_a_hold_whose_status_disagrees_with_its_settlement_is_caught():
    credit("alice", 100)
    hold_id = hold("alice", 30).transaction.hold_id
    capture(hold_id, amount=10)
    # The totals still add up; only the record of how the hold was settled is wrong.
    Hold.objects.filter(pk=hold_id).update(status=Hold.Status.RELEASED, captured_amount=0, released_amount=30)
    assert broken_checks() == {"hold_transactions_agree"}


@pytest.mark.ledger_broken  # tampers with the ledger on purpose: the check must catch it
def test_a_hold_whose_settled_amounts_disagree_with_its_capture_is_caught():
    credit("alice", 100)
    hold_id = hold("alice", 30).transaction.hold_id
    capture(hold_id, amount=10)
    Hold.objects.filter(pk=hold_id).update(captured_amount=12, released_amount=18)
    out = StringIO()
    with pytest.raises(CommandError, match="hold_transactions_agree"):
        call_command("verify_ledger", stdout=out)
    assert f"hold {hold_id}: captured, 1 placing and 1 settling transaction(s), 0 matching its status" in out.getvalue()


@pytest.mark.ledger_broken  # tampers with the ledger on purpose: the check must catch it
def test_an_active_hold_with_a_settlement_is_caught():
    credit("alice", 100)
    hold_id = hold("alice", 30).transaction.hold_id
    release(hold_id)
    Hold.objects.filter(pk=hold_id).update(status=Hold.Status.ACTIVE, released_amount=0)
    assert "hold_transactions_agree" in broken_checks()


class _Undo(Exception):
    pass


def test_an_unbalanced_transaction_is_caught():
    # Entries cannot be changed, so the break is a foreign entry added to an existing transaction,
    # inside a savepoint that is rolled back before the commit-time trigger could refuse it.
    txn = credit("alice", 100).transaction
    issued = Account.objects.get(code="points_issued")
    with pytest.raises(_Undo), transaction.atomic():
        raw_sql(
            "INSERT INTO points_entry (transaction_id, account_id, part, amount) VALUES (%s, %s, 'available', 5)",
            [txn.pk, issued.pk],
        )
        assert broken_checks() == {"transactions_balanced", "ledger_balanced"}
        raise _Undo
    assert broken_checks() == set()


@pytest.mark.django_db(transaction=True)
def test_verify_ledger_exits_non_zero_from_the_command_line():
    busy_ledger()
    raw_sql("UPDATE points_account SET balance = balance - 3 WHERE user_id = %s", ["bob"])
    db = connection.settings_dict
    credentials = quote(db["USER"] or "") + (f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else "")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings_test",
        "DATABASE_URL": f"postgres://{credentials}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}",
    }

    result = subprocess.run(
        [sys.executable, "manage.py", "verify_ledger"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )

    assert result.returncode != 0
    assert "balances_match_entries" in result.stderr
    assert "bob: balance 97 != entries 100" in result.stdout

    raw_sql("UPDATE points_account SET balance = balance + 3 WHERE user_id = %s", ["bob"])
    fixed = subprocess.run(
        [sys.executable, "manage.py", "verify_ledger"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
