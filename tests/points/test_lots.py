"""Lots and points expiry (SPEC §13): opening, consumption order, expiry runs and the account's notice."""

import logging
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from points import selectors, services
from points.errors import ExpiryInPast, InvalidRequest
from points.expiry import lot_expire, lots_expire_due
from points.models import Account, Entry, Lot, SystemAccount, Transaction
from points.tasks import expire_points
from points.verification import ledger_verify

from .conftest import assert_ledger_ok, capture, credit, debit, hold, release, totals

pytestmark = pytest.mark.django_db


def open_lots(user_id: str) -> list[tuple[int, object]]:
    """(remaining, expires_at) of the user's open lots in consumption order."""
    return [
        (lot.remaining, lot.expires_at)
        for lot in selectors.account_lots(user_id=user_id).order_by("expiry_order", "created_at", "id")
    ]


def due(user_id: str, amount: int, *, ago: timedelta = timedelta(minutes=1)):
    """A credit whose lot is already past its expiry (as if posted long ago)."""
    result = credit(user_id, amount, expires_at=timezone.now() + timedelta(days=1))
    Lot.objects.filter(transaction_id=result.transaction.pk).update(expires_at=timezone.now() - ago)
    return result


def test_a_credit_opens_a_lot_expiring_when_asked():
    moment = timezone.now() + timedelta(days=10)
    result = credit("alice", 100, expires_at=moment)

    lot = Lot.objects.get(transaction_id=result.transaction.pk)
    assert (lot.amount, lot.remaining, lot.expires_at, lot.account.user_id) == (100, 100, moment, "alice")
    assert lot.created_at == result.transaction.created_at


@pytest.mark.django_db(transaction=True)
def test_a_credit_on_either_path_opens_its_lot_with_the_default_expiry(settings):
    settings.POINTS_EXPIRE_AFTER_DAYS = 90
    first = credit("alice", 10).transaction  # stepwise: the account is new
    second = credit("alice", 20).transaction  # one statement
    settings.POINTS_EXPIRE_AFTER_DAYS = 0
    third = credit("alice", 30).transaction

    expiries = dict(Lot.objects.values_list("transaction_id", "expires_at"))
    assert expiries == {
        first.pk: first.created_at + timedelta(days=90),
        second.pk: second.created_at + timedelta(days=90),
        third.pk: None,
    }
    assert_ledger_ok()


@pytest.mark.parametrize("moment", [timezone.now().replace(tzinfo=None), "2030-01-01"])
def test_a_credit_refuses_an_expiry_that_is_not_an_aware_moment(moment, snapshot):
    before = snapshot()
    with pytest.raises(InvalidRequest) as refused:
        credit("alice", 10, expires_at=moment)
    assert list(refused.value.details) == ["expires_at"]
    assert snapshot() == before


def test_a_credit_refuses_an_expiry_in_the_past(snapshot):
    before = snapshot()
    with pytest.raises(ExpiryInPast):
        credit("alice", 10, expires_at=timezone.now() - timedelta(seconds=1), external_id="late")
    assert snapshot() == before


def test_a_credit_with_an_expiry_replays_and_conflicts_by_it():
    moment = timezone.now() + timedelta(days=10)
    credit("alice", 10, external_id="c", expires_at=moment)
    assert credit("alice", 10, external_id="c", expires_at=moment).replayed is True
    with pytest.raises(services.IdempotencyConflict):
        credit("alice", 10, external_id="c", expires_at=moment + timedelta(days=1))
    with pytest.raises(services.IdempotencyConflict):
        credit("alice", 10, external_id="c")


def test_debits_take_soonest_expiry_first_never_expiring_last_oldest_first_among_equals():
    now = timezone.now()
    credit("alice", 10)  # never, oldest
    credit("alice", 20, expires_at=now + timedelta(days=20))
    credit("alice", 30)  # never, newer
    credit("alice", 40, expires_at=now + timedelta(days=5))

    debit("alice", 45)  # 40 (day 5) + 5 (day 20)
    assert open_lots("alice") == [(15, now + timedelta(days=20)), (10, None), (30, None)]
    debit("alice", 20)  # 15 (day 20) + 5 of the oldest never-expiring
    assert open_lots("alice") == [(5, None), (30, None)]
    assert_ledger_ok()


def test_a_capture_takes_from_the_lots_and_a_release_does_not():
    now = timezone.now()
    credit("alice", 50, expires_at=now + timedelta(days=1))
    credit("alice", 50)
    held = hold("alice", 70)
    assert open_lots("alice") == [(50, now + timedelta(days=1)), (50, None)]  # a hold takes nothing yet

    capture(held.transaction.hold_id, amount=60)
    assert open_lots("alice") == [(40, None)]
    release(hold("alice", 10).transaction.hold_id)
    assert open_lots("alice") == [(40, None)]
    assert_ledger_ok()


def test_adjustments_open_and_take_lots(django_user_model):
    staff = django_user_model.objects.create_user("finance")
    moment = timezone.now() + timedelta(days=7)
    credit("alice", 10)
    services.account_adjust(user_id="alice", amount=25, reason="goodwill", staff_user=staff, expires_at=moment)
    assert open_lots("alice") == [(25, moment), (10, None)]
    services.account_adjust(user_id="alice", amount=-30, reason="correction", staff_user=staff)
    assert open_lots("alice") == [(5, None)]
    assert_ledger_ok()


def test_an_expiry_run_expires_each_due_lots_remainder_once():
    due("alice", 100)
    debit("alice", 30)
    credit("alice", 50)  # never expires
    due("bob", 20)

    run = lots_expire_due()

    assert (run.expired_lots, run.expired_points, run.skipped) == (2, 90, 0)
    assert totals("alice") == (50, 0, 50)
    assert totals("bob") == (0, 0, 0)
    expiry = Transaction.objects.get(kind="points_expiry", account__user_id="alice")
    assert (expiry.amount, expiry.source, expiry.balance_after, expiry.reason) == (70, "system", 50, "points expired")
    legs = Entry.objects.filter(transaction=expiry).values_list("account__code", "amount")
    assert sorted(legs, key=lambda leg: leg[1]) == [(None, -70), (SystemAccount.EXPIRED.value, 70)]
    assert lots_expire_due().expired_lots == 0  # never twice
    assert Transaction.objects.filter(kind="points_expiry").count() == 2
    assert_ledger_ok()


def test_an_expiry_run_spares_what_active_holds_need_until_they_settle():
    due("alice", 100)
    held = hold("alice", 60)

    assert lots_expire_due().expired_points == 40
    assert totals("alice") == (60, 60, 0)
    assert lots_expire_due().expired_points == 0  # the holds still need the rest

    release(held.transaction.hold_id)
    assert lots_expire_due().expired_points == 60
    assert totals("alice") == (0, 0, 0)
    assert Transaction.objects.filter(kind="points_expiry").count() == 2
    assert_ledger_ok()


def test_a_lot_not_yet_due_is_left_alone():
    credit("alice", 100, expires_at=timezone.now() + timedelta(minutes=5))
    assert lots_expire_due().expired_lots == 0
    assert lot_expire(lot_id=Lot.objects.get().pk, now=timezone.now()) is None
    assert totals("alice") == (100, 0, 100)


def test_the_command_reports_progress_and_the_total():
    for n in range(3):
        due(f"user-{n}", 10 + n)
    out = StringIO()

    call_command("expire_points", "--batch-size", "2", stdout=out)

    lines = out.getvalue().splitlines()
    assert lines[0] == "... 2 lot(s), 21 point(s) expired so far"
    assert lines[1] == "... 3 lot(s), 33 point(s) expired so far"
    assert lines[-1] == "Expired 3 lot(s), 33 point(s); skipped 0 (logged)."
    assert_ledger_ok()


def test_the_periodic_task_skips_and_logs_a_lot_it_cannot_expire_and_goes_on(caplog):
    broken = due("alice", 10)
    due("bob", 20)
    broken_lot = Lot.objects.get(transaction_id=broken.transaction.pk)
    # A real database failure for one lot: its expiry transaction is refused by a trigger.
    pattern = f"points_expiry:{broken_lot.pk}:%"  # an id and a wildcard: nothing to escape
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            CREATE FUNCTION test_refuse_one_expiry() RETURNS trigger AS $$
            BEGIN
                IF NEW.external_id LIKE '{pattern}' THEN RAISE EXCEPTION 'refused for the test'; END IF;
                RETURN NEW;
            END; $$ LANGUAGE plpgsql
            """
        )
        cursor.execute(
            "CREATE TRIGGER test_refuse_one_expiry BEFORE INSERT ON points_transaction "
            "FOR EACH ROW EXECUTE FUNCTION test_refuse_one_expiry()"
        )

    with caplog.at_level(logging.ERROR, logger="points.expiry"):
        expired = expire_points()

    assert expired == 1
    assert totals("bob") == (0, 0, 0)
    assert totals("alice") == (10, 0, 10)  # left for a later run
    assert [record.getMessage() for record in caplog.records] == [
        f"points expiry: lot {broken_lot.pk} could not be expired; left for a later run"
    ]
    assert_ledger_ok()


def test_the_account_tells_what_expires_soon_and_next(settings):
    settings.POINTS_EXPIRY_NOTICE_DAYS = 30
    now = timezone.now()
    soonest = now + timedelta(days=3)
    credit("alice", 10, expires_at=soonest)
    credit("alice", 5, expires_at=soonest)
    credit("alice", 20, expires_at=now + timedelta(days=29))
    credit("alice", 40, expires_at=now + timedelta(days=31))
    credit("alice", 80)
    debit("alice", 4)

    totals_now = selectors.account_totals(user_id="alice")

    assert totals_now["balance"] == 151
    assert totals_now["expiring_soon"] == 31
    assert totals_now["next_expiry"] == {"amount": 11, "expires_at": soonest}


@pytest.mark.ledger_broken  # tampers with the ledger on purpose: the check must catch it
def test_verify_names_lots_that_do_not_add_up_to_the_balance():
    credit("alice", 100)
    Lot.objects.filter(account__user_id="alice").update(remaining=90)
    broken = {check.name for check in ledger_verify() if not check.ok}
    assert broken == {"lots_match_balance"}


@pytest.mark.ledger_broken  # tampers with the ledger on purpose: the check must catch it
def test_a_take_beyond_the_lots_is_an_error_not_a_silent_break():
    credit("alice", 100)
    Lot.objects.filter(account__user_id="alice").update(remaining=50)
    with pytest.raises(RuntimeError):
        debit("alice", 60)
    assert totals("alice") == (100, 0, 100)
    assert Account.objects.get(user_id="alice").balance == 100


@pytest.mark.django_db(transaction=True)
def test_an_expiry_run_writes_a_run_of_lots_in_a_few_statements_as_lot_by_lot_would():
    """Several due lots per account, one account with a hold: the bulk run spares what the hold
    needs across the account's lots in expiry order, and costs the same statements for 3 lots as for 30."""
    from django.test.utils import CaptureQueriesContext

    def prepare(prefix: str, count: int) -> None:
        for n in range(count):
            due(f"{prefix}-{n % 3}", 10 + n, ago=timedelta(minutes=count - n))
        credit(f"{prefix}-0", 5)  # never expires
        hold(f"{prefix}-1", 10)

    services.system_account_id(SystemAccount.EXPIRED)  # looked up once per process
    prepare("small", 3)
    with CaptureQueriesContext(connection) as small:
        small_run = lots_expire_due()
    prepare("large", 30)
    with CaptureQueriesContext(connection) as large:
        large_run = lots_expire_due()

    assert len(large.captured_queries) == len(small.captured_queries)
    assert (small_run.expired_lots, small_run.skipped) == (3, 0)
    assert (large_run.expired_lots, large_run.skipped) == (30, 0)
    assert totals("large-0") == (5, 0, 5)
    assert totals("large-1") == (10, 10, 0)  # the hold's points are spared
    assert totals("large-2") == (0, 0, 0)
    due_points = sum(10 + n for n in range(30))
    assert large_run.expired_points == due_points - 10
    # Balance after each expiry, in expiry order, as lot by lot would have stamped it.
    expiries = Transaction.objects.filter(kind="points_expiry", account__user_id="large-0").order_by("balance_after")
    lots = sorted((lot for lot in Lot.objects.filter(account__user_id="large-0", expired_amount__gt=0)),
                  key=lambda lot: (lot.expires_at, lot.pk))  # fmt: skip
    assert [expiry.metadata["lot_id"] for expiry in expiries.reverse()] == [str(lot.pk) for lot in lots]
    assert [expiry.balance_after for expiry in expiries.reverse()] == [
        5 + sum(lot.amount for lot in lots[index + 1 :]) for index in range(len(lots))
    ]
    assert lots_expire_due().expired_lots == 0  # never twice
    assert_ledger_ok()
