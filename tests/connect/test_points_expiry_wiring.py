"""Points expiry as Connect sees it: a reward line's ``params.expires_in_days`` (SPEC §13), the
``points.expiring`` webhook (SPEC §16) and the embedded beat that runs both expiry and notice."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from connect.delivery import reward_action_dispatch
from connect.models import RewardAction, UserProfile
from connect.profiles import locked_release
from connect.tasks import notify_points_expiring
from connect.webhooks.models import WebhookDelivery
from connect.webhooks.services import webhook_subscription_create
from points.models import Lot, Transaction
from points.selectors import account_totals
from points.services import account_credit

from .faults.helpers import action_create, assert_ledger_ok, rule_create

Status = RewardAction.Status


@pytest.fixture
def expiring_subscription(db, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    return webhook_subscription_create(url="http://127.0.0.1:9/hook", kinds=["points.expiring"], secret="s" * 32)


def test_expires_in_days_makes_the_credits_lot_expire_that_many_days_after_posting(db):
    rule = rule_create("expiring_reward", params={"expires_in_days": 30})
    action = action_create(rule=rule, target="alice", amount=25, params={"expires_in_days": 30})

    assert reward_action_dispatch(action_id=action.pk).status == Status.COMPLETED

    txn = Transaction.objects.get(external_id=str(action.pk))
    lot = Lot.objects.get(transaction=txn)
    assert lot.expires_at == action.created_at + timedelta(days=30)
    assert abs(lot.expires_at - (txn.created_at + timedelta(days=30))) < timedelta(seconds=5)
    assert account_totals(user_id="alice")["next_expiry"] == {"amount": 25, "expires_at": lot.expires_at}
    # a re-run of the same action replays the credit (the same expiry is the same request)
    RewardAction.objects.filter(pk=action.pk).update(status=Status.PENDING, next_attempt_at=None)
    assert reward_action_dispatch(action_id=action.pk).status == Status.COMPLETED
    action.refresh_from_db()
    assert action.result["replayed"] is True
    assert_ledger_ok()


def test_a_locked_reward_released_later_than_its_expiry_window_is_paid_and_expires_from_its_release(db):
    """Earned 31 days ago under a lock condition, released now: the credit is posted now, so its lot
    expires 30 days from now (counted from created_at it would already have expired, and the ledger
    would refuse the credit for good)."""
    rule = rule_create("locked_expiring", params={"expires_in_days": 30})
    action = action_create(
        rule=rule, target="vicky", amount=50, params={"expires_in_days": 30}, status=Status.LOCKED,
        locked_until_condition="vip_or_pro", age_seconds=31 * 86400,
    )  # fmt: skip
    UserProfile.objects.create(user_id="vicky", is_vip=True)
    assert locked_release(user_id="vicky") == [str(action.pk)]

    assert reward_action_dispatch(action_id=action.pk).status == Status.COMPLETED

    action.refresh_from_db()
    lot = Lot.objects.get(transaction__external_id=str(action.pk))
    assert lot.expires_at == action.released_at + timedelta(days=30)
    assert abs(action.released_at - timezone.now()) < timedelta(seconds=5)
    assert account_totals(user_id="vicky")["balance"] == 50
    # a re-run sends the same expiry: the credit is replayed, not refused as a conflict
    RewardAction.objects.filter(pk=action.pk).update(status=Status.PENDING, next_attempt_at=None)
    assert reward_action_dispatch(action_id=action.pk).status == Status.COMPLETED
    action.refresh_from_db()
    assert action.result["replayed"] is True
    assert_ledger_ok()


def test_a_line_without_expires_in_days_keeps_the_ledgers_default(db, settings):
    settings.POINTS_EXPIRE_AFTER_DAYS = 0
    action = action_create(rule=rule_create(), target="bob", amount=5)
    reward_action_dispatch(action_id=action.pk)
    assert Lot.objects.get(transaction__external_id=str(action.pk)).expires_at is None


@pytest.mark.parametrize("days", [0, -3, "30", 1.5, True])
def test_an_invalid_expires_in_days_fails_the_action_with_a_clear_error(db, days):
    action = action_create(rule=rule_create(), target="carol", amount=5, params={"expires_in_days": days})
    assert reward_action_dispatch(action_id=action.pk).status == Status.FAILED
    action.refresh_from_db()
    assert "expires_in_days" in action.last_error
    assert not Transaction.objects.filter(external_id=str(action.pk)).exists()


def test_points_expiring_is_sent_once_per_lot_within_the_notice_days(expiring_subscription, settings):
    settings.POINTS_EXPIRY_NOTICE_DAYS = 10
    now = timezone.now()
    soon = account_credit(source="svc", external_id="soon", user_id="u1", amount=7, expires_at=now + timedelta(days=3))
    account_credit(source="svc", external_id="later", user_id="u1", amount=5, expires_at=now + timedelta(days=40))
    account_credit(source="svc", external_id="never", user_id="u2", amount=9)

    assert notify_points_expiring() == 1
    assert notify_points_expiring() == 0  # a second run adds nothing for the same lot

    deliveries = WebhookDelivery.objects.filter(kind="points.expiring")
    lot = Lot.objects.get(transaction=soon.transaction)
    assert [d.payload for d in deliveries] == [
        {
            "user_id": "u1",
            "lot_id": str(lot.pk),
            "amount": 7,
            "expires_at": lot.expires_at.isoformat().replace("+00:00", "Z"),
        }
    ]
    assert deliveries.get().dedupe_key == f"lot:{lot.pk}"

    # a lot that comes within the notice later is announced then
    settings.POINTS_EXPIRY_NOTICE_DAYS = 45
    assert notify_points_expiring() == 1
    assert sorted(d.payload["amount"] for d in WebhookDelivery.objects.filter(kind="points.expiring")) == [5, 7]
    # a subscription added later is told about both lots, the first one about nothing again
    webhook_subscription_create(url="http://127.0.0.1:9/other", kinds=["points.expiring"], secret="t" * 32)
    assert notify_points_expiring() == 2
    per_subscription = WebhookDelivery.objects.filter(kind="points.expiring").values_list(
        "subscription_id", "dedupe_key"
    )
    assert len(per_subscription) == len(set(per_subscription)) == 4


def test_no_subscription_no_notice(db):
    account_credit(source="svc", external_id="soon", user_id="u1", amount=7,
                   expires_at=timezone.now() + timedelta(days=1))  # fmt: skip
    assert notify_points_expiring() == 0
    assert not WebhookDelivery.objects.exists()


def test_the_beat_schedule_runs_the_notice(settings):
    from django.conf import settings as live

    assert live.CELERY_BEAT_SCHEDULE["notify-points-expiring"]["task"] == "connect.tasks.notify_points_expiring"


def test_the_embedded_beat_expires_due_points_and_announces_expiring_ones(expiring_subscription, settings):
    settings.POINTS_EXPIRY_NOTICE_DAYS = 30
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    now = timezone.now()
    due = account_credit(source="svc", external_id="due", user_id="u1", amount=4, expires_at=now + timedelta(days=1))
    account_credit(source="svc", external_id="soon", user_id="u1", amount=6, expires_at=now + timedelta(days=5))
    Lot.objects.filter(transaction=due.transaction).update(expires_at=now - timedelta(seconds=1))

    out = StringIO()
    call_command("embedded_beat", "--once", stdout=out)

    assert "and 1 lot(s)" in out.getvalue()
    assert account_totals(user_id="u1")["balance"] == 6
    assert Transaction.objects.filter(kind=Transaction.Kind.POINTS_EXPIRY).count() == 1
    assert [d.payload["amount"] for d in WebhookDelivery.objects.filter(kind="points.expiring")] == [6]
    assert_ledger_ok()
