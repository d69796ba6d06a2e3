"""Concurrent writers on PostgreSQL: real threads, each with its own connection, released together."""

import threading
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from points import services
from points.errors import HoldNotActive, InsufficientFunds
from points.models import Account, Hold, SystemAccount, Transaction

from .conftest import assert_ledger_ok, capture, credit, debit, hold, release, totals

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 12


def run_together(work, count: int = THREADS) -> list:
    """Run ``work(i)`` in ``count`` threads started at the same instant; each result or raised exception."""
    barrier = threading.Barrier(count)
    outcomes: list = [None] * count

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            outcomes[i] = work(i)
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcomes[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a writer hung (deadlock?)"
    return outcomes


def kinds(outcomes) -> Counter:
    return Counter(type(outcome).__name__ for outcome in outcomes)


def unexpected(outcomes, *allowed) -> list:
    return [o for o in outcomes if isinstance(o, Exception) and not isinstance(o, allowed)]


def test_parallel_debits_never_overdraw_and_exactly_the_affordable_ones_succeed():
    credit("alice", 500)

    outcomes = run_together(lambda i: debit("alice", 100, external_id=f"d-{i}"))

    assert unexpected(outcomes, InsufficientFunds) == []
    assert kinds(outcomes) == Counter({"LedgerResult": 5, "InsufficientFunds": THREADS - 5})
    assert totals("alice") == (0, 0, 0)
    assert Transaction.objects.filter(kind="debit").count() == 5
    succeeded = sorted(o.transaction.balance_after for o in outcomes if isinstance(o, services.LedgerResult))
    assert succeeded == [0, 100, 200, 300, 400]
    assert_ledger_ok()


def test_parallel_credits_to_one_new_user_lose_no_update():
    outcomes = run_together(lambda i: credit("newcomer", i + 1, external_id=f"c-{i}"))

    assert unexpected(outcomes) == []
    expected = sum(range(1, THREADS + 1))
    assert totals("newcomer") == (expected, 0, expected)
    assert sorted(o.transaction.balance_after for o in outcomes)[-1] == expected
    assert_ledger_ok()


def test_parallel_replays_of_one_external_id_post_exactly_once():
    outcomes = run_together(lambda i: credit("alice", 250, external_id="only-once", reason="r"))

    assert unexpected(outcomes) == []
    assert len({o.transaction.pk for o in outcomes}) == 1
    assert [o.replayed for o in outcomes].count(False) == 1
    assert totals("alice") == (250, 0, 250)
    assert Transaction.objects.filter(external_id="only-once").count() == 1
    assert_ledger_ok()


def test_parallel_replays_of_a_debit_post_exactly_once():
    credit("alice", 300)

    outcomes = run_together(lambda i: debit("alice", 200, external_id="spend"))

    assert unexpected(outcomes) == []
    assert len({o.transaction.pk for o in outcomes}) == 1
    assert [o.replayed for o in outcomes].count(False) == 1
    assert totals("alice") == (100, 0, 100)
    assert_ledger_ok()


def test_parallel_holds_never_over_commit():
    credit("alice", 500)

    outcomes = run_together(lambda i: hold("alice", 100, external_id=f"h-{i}"))

    assert unexpected(outcomes, InsufficientFunds) == []
    assert kinds(outcomes) == Counter({"LedgerResult": 5, "InsufficientFunds": THREADS - 5})
    assert totals("alice") == (500, 500, 0)
    assert Hold.objects.filter(status="active").count() == 5
    assert_ledger_ok()


def test_parallel_debits_and_holds_share_one_available():
    credit("alice", 600)

    def spend(i):
        return debit("alice", 100, external_id=f"d-{i}") if i % 2 else hold("alice", 100, external_id=f"h-{i}")

    outcomes = run_together(spend)

    assert unexpected(outcomes, InsufficientFunds) == []
    assert kinds(outcomes)["LedgerResult"] == 6
    balance, held, available = totals("alice")
    assert available == 0
    assert held == 100 * Hold.objects.count()
    assert balance == 600 - 100 * Transaction.objects.filter(kind="debit").count()
    assert_ledger_ok()


@pytest.mark.parametrize("round_", range(3))
def test_parallel_capture_and_release_of_one_hold_exactly_one_wins(round_):
    credit("alice", 100)
    hold_id = hold("alice", 100).transaction.hold_id

    def settle(i):
        if i % 2:
            return capture(hold_id, amount=60, external_id=f"cap-{i}")
        return release(hold_id, external_id=f"rel-{i}")

    outcomes = run_together(settle, count=8)

    assert unexpected(outcomes, HoldNotActive) == []
    winners = [o for o in outcomes if isinstance(o, services.LedgerResult)]
    assert len(winners) == 1
    settled = Hold.objects.get(pk=hold_id)
    assert Transaction.objects.filter(hold_id=hold_id).exclude(kind="hold").count() == 1
    if winners[0].transaction.kind == "capture":
        assert settled.status == "captured"
        assert totals("alice") == (40, 0, 40)
    else:
        assert settled.status == "released"
        assert totals("alice") == (100, 0, 100)
    assert_ledger_ok()


def test_parallel_expiry_sweeps_expire_each_hold_once():
    credit("alice", 1000)
    hold_ids = [hold("alice", 50).transaction.hold_id for _ in range(10)]
    Hold.objects.filter(pk__in=hold_ids).update(expires_at=timezone.now() - timedelta(seconds=1))

    outcomes = run_together(lambda i: services.holds_expire_due(batch_size=3), count=4)

    assert unexpected(outcomes) == []
    assert sum(outcomes) == 10
    assert Transaction.objects.filter(kind="expiry").count() == 10
    assert set(Hold.objects.values_list("status", flat=True)) == {"expired"}
    assert totals("alice") == (1000, 0, 1000)
    assert_ledger_ok()


def _wait_until(moment) -> None:
    delay = (moment - timezone.now()).total_seconds()
    if delay > 0:
        threading.Event().wait(delay + 0.01)


def _capture_in_thread(hold_id, outcome: dict) -> threading.Thread:
    def work():
        try:
            outcome["result"] = capture(hold_id, external_id="cap")
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcome["result"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def test_a_capture_overtaken_by_the_expiry_sweep_is_refused(monkeypatch):
    """The capture saw an unexpired hold, but the sweep closed it before the capture could: one settlement."""
    credit("alice", 100)
    hold_id = hold("alice", 100).transaction.hold_id
    expires_at = timezone.now() + timedelta(milliseconds=400)
    Hold.objects.filter(pk=hold_id).update(expires_at=expires_at)
    checked, swept = threading.Event(), threading.Event()
    close = services._hold_close

    def close_after_the_sweep(*args, **kwargs):
        checked.set()
        swept.wait(timeout=10)
        return close(*args, **kwargs)

    monkeypatch.setattr(services, "_hold_close", close_after_the_sweep)
    # The stepwise capture, whose check and close are separate statements. (The one-statement
    # capture checks and closes in one guarded UPDATE of the hold row, which the sweep's UPDATE waits for.)
    monkeypatch.setattr(services, "_settle_in_one_statement", lambda *args, **kwargs: False)
    outcome: dict = {}
    worker = _capture_in_thread(hold_id, outcome)
    try:
        assert checked.wait(timeout=10)
        _wait_until(expires_at)
        expired = services.holds_expire_due()
    finally:
        swept.set()
        worker.join(timeout=10)

    assert expired == 1
    assert isinstance(outcome["result"], HoldNotActive)
    assert Hold.objects.get(pk=hold_id).status == "expired"
    assert list(Transaction.objects.filter(hold_id=hold_id).values_list("kind", flat=True).order_by("kind")) == [
        "expiry", "hold",
    ]  # fmt: skip
    assert totals("alice") == (100, 0, 100)
    assert_ledger_ok()


def test_the_expiry_sweep_leaves_a_hold_being_captured_alone(monkeypatch):
    """The capture holds the hold's row when the sweep comes by: the sweep skips it, the capture stands."""
    credit("alice", 100)
    hold_id = hold("alice", 100).transaction.hold_id
    expires_at = timezone.now() + timedelta(milliseconds=400)
    Hold.objects.filter(pk=hold_id).update(expires_at=expires_at)
    closed, swept = threading.Event(), threading.Event()
    close = services._hold_close

    def close_then_wait_for_the_sweep(*args, **kwargs):
        close(*args, **kwargs)
        closed.set()
        swept.wait(timeout=10)

    monkeypatch.setattr(services, "_hold_close", close_then_wait_for_the_sweep)
    monkeypatch.setattr(services, "_settle_in_one_statement", lambda *args, **kwargs: False)  # the stepwise capture
    outcome: dict = {}
    worker = _capture_in_thread(hold_id, outcome)
    try:
        assert closed.wait(timeout=10)
        _wait_until(expires_at)
        expired_meanwhile = services.holds_expire_due()
    finally:
        swept.set()
        worker.join(timeout=10)

    assert expired_meanwhile == 0
    assert isinstance(outcome["result"], services.LedgerResult)
    assert services.holds_expire_due() == 0
    assert Hold.objects.get(pk=hold_id).status == "captured"
    assert Transaction.objects.filter(hold_id=hold_id).exclude(kind="hold").count() == 1
    assert totals("alice") == (0, 0, 0)
    assert_ledger_ok()


def test_many_users_in_parallel_do_not_deadlock():
    users = [f"user-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    for user in users:
        credit(user, 300)

    def mixed(i):
        user = users[i % 3]
        hold_id = hold(user, 50, external_id=f"h-{i}").transaction.hold_id
        debit(user, 20, external_id=f"d-{i}")
        if i % 2:
            return capture(hold_id, amount=30, external_id=f"c-{i}")
        return release(hold_id, external_id=f"r-{i}")

    outcomes = run_together(mixed)

    assert unexpected(outcomes) == []
    for n, user in enumerate(users):
        workers = [i for i in range(THREADS) if i % 3 == n]
        captured = sum(30 for i in workers if i % 2)
        assert totals(user) == (300 - 20 * len(workers) - captured, 0, 300 - 20 * len(workers) - captured)
    assert_ledger_ok()


def test_an_expiry_sweep_is_not_put_off_by_a_busy_account():
    """The sweep locks the hold, not the account: another operation in flight on the account only delays it."""
    credit("alice", 100)
    hold_id = hold("alice", 40).transaction.hold_id
    Hold.objects.filter(pk=hold_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    locked, done = threading.Event(), threading.Event()

    def busy_account():
        try:
            with transaction.atomic():
                Account.objects.select_for_update().get(user_id="alice")
                locked.set()
                done.wait(timeout=0.5)  # the sweep below starts while this lock is held
        finally:
            connection.close()

    worker = threading.Thread(target=busy_account)
    worker.start()
    assert locked.wait(timeout=10)
    try:
        expired = services.holds_expire_due()
    finally:
        done.set()
        worker.join(timeout=10)

    assert expired == 1
    assert Hold.objects.get(pk=hold_id).status == "expired"
    assert totals("alice") == (100, 0, 100)
    assert_ledger_ok()


def test_the_expiry_sweep_leaves_a_hold_being_captured_in_a_callers_transaction_alone():
    """The capture's UPDATE holds the hold's row until its transaction ends (here a caller's, kept
    open): the sweep, coming by after expiry, skips it, and the capture stands."""
    credit("alice", 100)
    hold_id = hold("alice", 100).transaction.hold_id
    expires_at = timezone.now() + timedelta(milliseconds=400)
    Hold.objects.filter(pk=hold_id).update(expires_at=expires_at)
    captured, swept = threading.Event(), threading.Event()
    outcome: dict = {}
    services.system_account_id(SystemAccount.SPENT)  # cached per process, so the capture does not look it up

    def work():
        try:
            with transaction.atomic(), CaptureQueriesContext(connection) as queries:
                outcome["result"] = capture(hold_id, external_id="cap")
                outcome["statements"] = [q["sql"].split()[0] for q in queries]
                captured.set()
                swept.wait(timeout=10)
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcome["result"] = exc
        finally:
            connection.close()

    worker = threading.Thread(target=work)
    worker.start()
    try:
        assert captured.wait(timeout=10)
        _wait_until(expires_at)
        expired_meanwhile = services.holds_expire_due()
    finally:
        swept.set()
        worker.join(timeout=10)

    assert isinstance(outcome["result"], services.LedgerResult)
    # The hold's row was locked by then: by the one-statement capture, or the stepwise one's UPDATE.
    assert {"WITH", "UPDATE"} & set(outcome["statements"])
    assert expired_meanwhile == 0
    assert Hold.objects.get(pk=hold_id).status == "captured"
    assert totals("alice") == (0, 0, 0)
    assert_ledger_ok()
