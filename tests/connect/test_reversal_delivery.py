"""Delivery of reversal actions (SPEC §8, §12): once the original's own delivery has ended, a ledger
reversal for points, the channel's reverse endpoint for nft and g2a; nothing delivered → the original
is reduced in place instead."""

import json
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from connect.delivery import reward_action_dispatch, reward_actions_dispatch, reward_actions_drain
from connect.models import RewardAction
from connect.webhooks.models import WebhookDelivery
from connect.webhooks.services import webhook_subscription_create
from points.models import Transaction
from points.selectors import account_totals
from points.services import account_debit

from .faults.helpers import assert_ledger_ok

Status = RewardAction.Status

VOUCHER = {
    "event_type": "voucher.premium_purchased",
    "source_service": "voucher_service",
    "actor_user_id": "buyer",
    "context": {"amount": 1000, "rf_partner_id": "partner", "pro_promoter_id": "promoter"},
}


def purchase(services, post_event, external_id="purchase-1", **context):
    body = {**VOUCHER, "context": {**VOUCHER["context"], **context}}
    response = post_event(services["voucher_service"], external_id=external_id, **body)
    assert response.status_code == 201, response.json()
    return response.json()


def refund(services, post_event, external_id="refund-1", reverses="purchase-1", **extra):
    body = {"event_type": "voucher.refunded", "source_service": "voucher_service", "actor_user_id": "buyer"}
    response = post_event(
        services["voucher_service"], external_id=external_id, reverses_external_id=reverses, **body, **extra
    )
    assert response.status_code == 201, response.json()
    return response.json()


def originals_of(event_id) -> dict[str, RewardAction]:
    return {a.target_user_id: a for a in RewardAction.objects.filter(event_id=event_id, reverses__isnull=True)}


def reversals_of(event_id) -> dict[str, RewardAction]:
    return {a.target_user_id: a for a in RewardAction.objects.filter(event_id=event_id, reverses__isnull=False)}


def dispatch_all():
    RewardAction.objects.filter(status=Status.PENDING).update(next_attempt_at=None)
    return reward_actions_dispatch(limit=100)


def balance(user_id):
    return account_totals(user_id=user_id)["balance"]


@pytest.fixture
def gateway(httpserver, settings):
    settings.G2A_GATEWAY_URL = httpserver.url_for("/gw")
    settings.G2A_GATEWAY_TOKEN = "gw-token"
    httpserver.expect_request("/gw/payouts", method="POST").respond_with_json({"payout_id": "p-1"}, status=201)
    httpserver.expect_request("/gw/payouts/reverse", method="POST").respond_with_json({"reversed": True})
    return httpserver


@pytest.mark.usefixtures("demo_rules")
class TestOriginalCompleted:
    def test_points_are_taken_back_and_the_gateway_is_asked_to_reverse(
        self, services, post_event, gateway, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks(execute=False):
            original = purchase(services, post_event)
        dispatch_all()
        originals = originals_of(original["id"])
        assert {a.status for a in originals.values()} == {Status.COMPLETED}
        assert (balance("promoter"), balance("buyer")) == (50, 10)

        with django_capture_on_commit_callbacks(execute=False):
            body = refund(services, post_event, reversal_fraction=0.5)
        outcomes = dispatch_all()
        assert {o.status for o in outcomes} == {Status.COMPLETED}

        reversals = reversals_of(body["id"])
        assert (balance("promoter"), balance("buyer")) == (25, 5)
        for target in ("promoter", "buyer"):
            reversal = reversals[target]
            assert reversal.status == Status.COMPLETED and reversal.shortfall == 0
            txn = Transaction.objects.get(external_id=str(reversal.pk))
            assert txn.kind == Transaction.Kind.REVERSAL
            assert str(txn.reverses.external_id) == str(originals[target].pk)
            assert reversal.result["transaction_id"] == str(txn.pk)
            assert reversal.result["balance"] == balance(target)
        # the token gateway was called once for the payout and once for its reversal
        calls = [(request.path, request) for request, _ in gateway.log]
        reverse_calls = [request for path, request in calls if path == "/gw/payouts/reverse"]
        assert len(reverse_calls) == 1
        request = reverse_calls[0]
        assert request.headers["Idempotency-Key"] == str(reversals["partner"].pk)
        assert request.headers["Authorization"] == "Bearer gw-token"
        assert json.loads(request.data) == {
            "user_id": "partner",
            "amount": 50,
            "action_id": str(originals["partner"].pk),
            "reversal_action_id": str(reversals["partner"].pk),
        }
        assert reversals["partner"].status == Status.COMPLETED
        assert reversals["partner"].result == {"reversed": True}
        assert_ledger_ok()

    def test_points_already_spent_are_a_shortfall_never_a_negative_balance(
        self, services, post_event, gateway, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks(execute=False):
            purchase(services, post_event)
        dispatch_all()
        account_debit(source="shop", external_id="spend", user_id="buyer", amount=8)
        with django_capture_on_commit_callbacks(execute=False):
            body = refund(services, post_event)
        dispatch_all()
        reversal = reversals_of(body["id"])["buyer"]
        assert reversal.status == Status.COMPLETED
        assert (reversal.amount, reversal.shortfall) == (10, 8)
        assert reversal.result["shortfall"] == 8 and reversal.result["reversed"] == 2
        assert balance("buyer") == 0
        assert balance("promoter") == 0
        assert_ledger_ok()

    def test_a_rerun_of_a_reversal_takes_back_once(
        self, services, post_event, gateway, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks(execute=False):
            purchase(services, post_event)
        dispatch_all()
        with django_capture_on_commit_callbacks(execute=False):
            body = refund(services, post_event)
        reversal = reversals_of(body["id"])["promoter"]
        assert reward_action_dispatch(action_id=reversal.pk).status == Status.COMPLETED
        # as if the outcome had been lost: the run again replays the same ledger reversal
        RewardAction.objects.filter(pk=reversal.pk).update(status=Status.PENDING, next_attempt_at=None)
        assert reward_action_dispatch(action_id=reversal.pk).status == Status.COMPLETED
        reversal.refresh_from_db()
        assert reversal.result["replayed"] is True
        assert Transaction.objects.filter(external_id=str(reversal.pk)).count() == 1
        assert balance("promoter") == 0
        assert_ledger_ok()


@pytest.mark.django_db
def test_a_badge_is_revoked_with_the_reversal_action_as_idempotency_key(
    make_rule, services, post_event, httpserver, settings, django_capture_on_commit_callbacks
):
    settings.NFT_SERVICE_URL = httpserver.url_for("")
    settings.NFT_SERVICE_TOKEN = "nft-token"
    httpserver.expect_request("/badges", method="POST").respond_with_json({"token_id": "t-1"}, status=201)
    httpserver.expect_request("/badges/revoke", method="POST").respond_with_json({"revoked": "t-1"})
    make_rule("badge", "quest.completed", [{"target": "actor", "reward_type": "nft", "amount": "1",
                                           "params": {"badge_type": "gold"}}])  # fmt: skip
    api = services["quest_service"]
    with django_capture_on_commit_callbacks(execute=False):
        event = post_event(api, external_id="q-1", event_type="quest.completed", source_service="quest_service",
                           actor_user_id="alice").json()  # fmt: skip
    dispatch_all()
    with django_capture_on_commit_callbacks(execute=False):
        body = post_event(api, external_id="q-1-revoked", event_type="quest.revoked", source_service="quest_service",
                          actor_user_id="alice", reverses_external_id="q-1").json()  # fmt: skip
    dispatch_all()
    original = originals_of(event["id"])["alice"]
    reversal = reversals_of(body["id"])["alice"]
    assert (original.status, reversal.status) == (Status.COMPLETED, Status.COMPLETED)
    [revoke] = [request for request, _ in httpserver.log if request.path == "/badges/revoke"]
    assert revoke.headers["Idempotency-Key"] == str(reversal.pk)
    assert json.loads(revoke.data) == {
        "user_id": "alice",
        "badge_type": "gold",
        "action_id": str(original.pk),
        "amount": 1,
        "reversal_action_id": str(reversal.pk),
    }
    assert reversal.result == {"revoked": "t-1"}


@pytest.mark.usefixtures("demo_rules")
class TestOriginalStillInDelivery:
    @pytest.mark.parametrize("status", [Status.PENDING, Status.DISPATCHED])
    def test_the_reversal_waits_without_using_an_attempt_then_follows_the_original(
        self, status, services, post_event, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks(execute=False):
            original = purchase(services, post_event)
            promoter = originals_of(original["id"])["promoter"]
            # tried once already (a transient error), so the refund cannot reduce it in place
            RewardAction.objects.filter(pk=promoter.pk).update(status=status, attempts=1)
            body = refund(services, post_event)
        reversal = reversals_of(body["id"])["promoter"]
        RewardAction.objects.filter(pk=reversal.pk).update(last_error="old error")

        outcome = reward_action_dispatch(action_id=reversal.pk)

        reversal.refresh_from_db()
        assert outcome.status == Status.PENDING and outcome.waiting
        assert (reversal.status, reversal.attempts, reversal.last_error) == (Status.PENDING, 0, "")
        assert reversal.next_attempt_at > timezone.now()
        assert not Transaction.objects.filter(external_id=str(reversal.pk)).exists()

        # the original's delivery ends; the reversal follows it
        RewardAction.objects.filter(pk=promoter.pk).update(status=Status.PENDING, next_attempt_at=None)
        assert reward_action_dispatch(action_id=promoter.pk).status == Status.COMPLETED
        assert balance("promoter") == 50
        RewardAction.objects.filter(pk=reversal.pk).update(next_attempt_at=None)
        assert reward_action_dispatch(action_id=reversal.pk).status == Status.COMPLETED
        reversal.refresh_from_db()
        assert reversal.attempts == 1 and reversal.shortfall == 0
        assert balance("promoter") == 0
        assert_ledger_ok()


@pytest.mark.usefixtures("demo_rules")
class TestNothingWasDelivered:
    @pytest.mark.parametrize("status", [Status.FAILED, Status.CANCELLED])
    def test_a_partial_reversal_reduces_the_original_and_is_cancelled(
        self, status, services, post_event, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks(execute=False):
            original = purchase(services, post_event)
            promoter = originals_of(original["id"])["promoter"]
            RewardAction.objects.filter(pk=promoter.pk).update(status=Status.DISPATCHED, attempts=1)
            body = refund(services, post_event, reversal_fraction=0.3)
        reversal = reversals_of(body["id"])["promoter"]
        assert reversal.amount == 15
        # the original's delivery ends without paying anything
        RewardAction.objects.filter(pk=promoter.pk).update(status=status, cancel_reason="staff said so")

        outcome = reward_action_dispatch(action_id=reversal.pk)

        assert outcome.status == Status.CANCELLED
        reversal.refresh_from_db()
        promoter.refresh_from_db()
        assert reversal.status == Status.CANCELLED and reversal.attempts == 0
        assert str(promoter.pk) in reversal.cancel_reason and status in reversal.cancel_reason
        assert (promoter.amount, promoter.reversed_amount, promoter.status) == (35, 15, status)
        assert not Transaction.objects.filter(external_id__in=[str(reversal.pk), str(promoter.pk)]).exists()
        # a second run finds nothing to do and reduces nothing twice
        assert not reward_action_dispatch(action_id=reversal.pk).ran
        promoter.refresh_from_db()
        assert promoter.amount == 35

    def test_a_full_reversal_of_a_failed_original_cancels_it(
        self, services, post_event, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks(execute=False):
            original = purchase(services, post_event)
            buyer = originals_of(original["id"])["buyer"]
            RewardAction.objects.filter(pk=buyer.pk).update(status=Status.DISPATCHED, attempts=1)
            body = refund(services, post_event)
        RewardAction.objects.filter(pk=buyer.pk).update(status=Status.FAILED, last_error="ledger said no")
        reversal = reversals_of(body["id"])["buyer"]

        assert reward_action_dispatch(action_id=reversal.pk).status == Status.CANCELLED

        buyer.refresh_from_db()
        assert (buyer.amount, buyer.status, buyer.cancel_reason) == (0, Status.CANCELLED, f"reversed by {body['id']}")
        # a staff retry has nothing left to pay
        assert balance("buyer") == 0

    def test_an_original_retried_meanwhile_makes_the_reversal_wait(
        self, services, post_event, django_capture_on_commit_callbacks, monkeypatch
    ):
        """The original is re-read under its row lock when the outcome is stored: a staff retry between
        the look and the store turns the cancellation into a wait."""
        import connect.delivery as delivery

        with django_capture_on_commit_callbacks(execute=False):
            original = purchase(services, post_event)
            buyer = originals_of(original["id"])["buyer"]
            RewardAction.objects.filter(pk=buyer.pk).update(status=Status.DISPATCHED, attempts=1)
            body = refund(services, post_event)
        RewardAction.objects.filter(pk=buyer.pk).update(status=Status.FAILED)
        reversal = reversals_of(body["id"])["buyer"]
        held = delivery._reversals_held

        def retried_after_the_look(actions):
            outcomes = held(actions)
            RewardAction.objects.filter(pk=buyer.pk).update(status=Status.PENDING, next_attempt_at=None)
            return outcomes

        monkeypatch.setattr(delivery, "_reversals_held", retried_after_the_look)
        reward_action_dispatch(action_id=reversal.pk)
        reversal.refresh_from_db()
        buyer.refresh_from_db()
        assert (reversal.status, reversal.attempts) == (Status.PENDING, 0)
        assert (buyer.amount, buyer.status) == (10, Status.PENDING)


@pytest.mark.usefixtures("demo_rules")
def test_a_completed_and_a_failed_action_each_send_one_webhook_of_their_kind(
    services, post_event, httpserver, settings, django_capture_on_commit_callbacks
):
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    settings.G2A_GATEWAY_URL = httpserver.url_for("/gw")
    httpserver.expect_request("/gw/payouts").respond_with_json({"error": "no such partner"}, status=404)
    subscription = webhook_subscription_create(
        url=httpserver.url_for("/hook"),
        kinds=["reward_action.completed", "reward_action.failed"],
        secret="s" * 32,
    )
    with django_capture_on_commit_callbacks(execute=False):
        original = purchase(services, post_event)
        outcomes = dispatch_all()
        assert sorted(o.status for o in outcomes) == [Status.COMPLETED, Status.COMPLETED, Status.FAILED]
        # a second run changes no row, so it reports nothing
        assert reward_actions_dispatch(limit=100) == []
    actions = originals_of(original["id"])
    deliveries = WebhookDelivery.objects.filter(subscription=subscription)
    by_kind = {}
    for delivery in deliveries:
        by_kind.setdefault(delivery.kind, []).append(delivery.payload["id"])
    assert sorted(by_kind["reward_action.completed"]) == sorted([str(actions["promoter"].pk), str(actions["buyer"].pk)])
    assert by_kind["reward_action.failed"] == [str(actions["partner"].pk)]
    failed = deliveries.get(kind="reward_action.failed").payload
    assert failed["status"] == "failed" and "no such partner" in failed["last_error"]


# --- the race of SPEC §12 ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_refund_racing_the_dispatch_of_the_original_pays_once_and_reverses_once_or_never_pays(
    make_rule, services, post_event, monkeypatch
):
    """Each round stores one undelivered original, then a drain and its refund start together (the
    drain a little later each round, so both orders happen): every original ends paid once and
    reversed once, or never paid."""
    make_rule("quest_points", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "40"}])
    api = services["quest_service"]
    rounds = 12
    for n in range(rounds):
        with monkeypatch.context() as quiet:
            # the original is stored undelivered: its dispatch starts with the race
            quiet.setattr("connect.services.doorbell_ring_on_commit", lambda action_ids: None)
            response = post_event(api, external_id=f"q-{n}", event_type="quest.completed",
                                  source_service="quest_service", actor_user_id=f"racer-{n}")  # fmt: skip
            assert response.status_code == 201
        barrier = threading.Barrier(2)
        errors = []

        def drain(barrier, errors, delay):
            try:
                barrier.wait()
                time.sleep(delay)
                reward_actions_drain(seconds=1)
            except Exception as exc:  # reported below
                errors.append(exc)
            finally:
                connection.close()

        def refund_it(barrier, errors, n):
            try:
                barrier.wait()
                response = post_event(api, external_id=f"q-{n}-refund", event_type="quest.refunded",
                                      source_service="quest_service", actor_user_id=f"racer-{n}",
                                      reverses_external_id=f"q-{n}")  # fmt: skip
                assert response.status_code == 201, response.json()
            except Exception as exc:  # reported below
                errors.append(exc)
            finally:
                connection.close()

        threads = [
            threading.Thread(target=drain, args=(barrier, errors, 0.004 * n)),
            threading.Thread(target=refund_it, args=(barrier, errors, n)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
    # let every delivery end: what waited for its original goes now
    for _ in range(10):
        RewardAction.objects.filter(status=Status.PENDING).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
        reward_actions_drain(seconds=1)
        if not RewardAction.objects.filter(status__in=[Status.PENDING, Status.DISPATCHED]).exists():
            break
    assert not RewardAction.objects.filter(status__in=[Status.PENDING, Status.DISPATCHED]).exists()

    outcomes = set()
    for n in range(rounds):
        user = f"racer-{n}"
        original = RewardAction.objects.get(target_user_id=user, reverses__isnull=True)
        reversals = list(RewardAction.objects.filter(reverses=original))
        credits = Transaction.objects.filter(external_id=str(original.pk))
        outcomes.add(original.status)
        if original.status == Status.COMPLETED:
            # paid once and reversed once
            assert credits.count() == 1 and original.amount == 40
            assert [(r.status, r.amount) for r in reversals] == [(Status.COMPLETED, 40)]
            assert Transaction.objects.filter(reverses=credits.get()).count() == 1
        else:
            # never paid
            assert original.status == Status.CANCELLED and original.amount == 0
            assert not credits.exists()
            assert all(r.status == Status.CANCELLED for r in reversals)
        assert original.reversed_amount == 40
        assert balance(user) == 0
    assert_ledger_ok()
