"""Webhooks out (SPEC §16): subscriptions, the outbox written with what it reports, signed sending to a
real local HTTP server, retries, the delivery log, replay, rotation, and concurrent drains."""

import hashlib
import hmac
import json
import threading
import time
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import connections, transaction
from django.utils import timezone
from werkzeug import Request, Response

from connect.models import EconomicEvent, WebhookAttempt, WebhookDelivery, WebhookSubscription
from connect.webhooks import services as webhook_services
from connect.webhooks.addresses import webhook_url_problem
from connect.webhooks.services import (
    WebhookOutsideTransaction,
    webhook_deliveries_drain,
    webhook_deliveries_enqueue,
    webhook_deliveries_enqueue_many,
    webhook_deliveries_send_due,
    webhook_delivery_replay,
    webhook_secret_rotate,
    webhook_subscription_create,
)

SECRET = "s3cret-of-at-least-16-chars"


def signatures_of(header: str) -> tuple[int, list[str]]:
    parts = [part.split("=", 1) for part in header.split(",")]
    return int(dict(parts)["t"]), [value for key, value in parts if key == "v1"]


def signed_with(secret: str, header: str, body: bytes) -> bool:
    timestamp, signatures = signatures_of(header)
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return expected in signatures


class Receiver:
    """A local HTTP endpoint whose answer can be scripted; keeps every request it got."""

    def __init__(self, server):
        self.server = server
        self.status = 200
        self.delay = 0.0
        self.requests: list[tuple[dict, bytes]] = []
        self.other_path_hits = 0
        self._lock = threading.Lock()
        server.expect_request("/hook").respond_with_handler(self._handle)
        server.expect_request("/elsewhere").respond_with_handler(self._elsewhere)

    @property
    def url(self) -> str:
        return self.server.url_for("/hook")

    def _handle(self, request: Request) -> Response:
        with self._lock:
            self.requests.append((dict(request.headers), request.get_data()))
            status, delay = self.status, self.delay
        if delay:
            time.sleep(delay)
        if status == 302:
            return Response("", status=302, headers={"Location": self.server.url_for("/elsewhere")})
        return Response('{"ok": true}', status=status, content_type="application/json")

    def _elsewhere(self, request: Request) -> Response:
        self.other_path_hits += 1
        return Response("", status=200)


@pytest.fixture
def receiver(httpserver, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    httpserver.no_handler_status_code = 404
    return Receiver(httpserver)


@pytest.fixture
def subscription(db, receiver):
    return webhook_subscription_create(
        url=receiver.url, kinds=["event.failed", "reward_action.completed"], secret=SECRET
    )


def enqueue(kind="reward_action.completed", payload=None, **extra):
    with transaction.atomic():
        return webhook_deliveries_enqueue(kind=kind, payload=payload or {"id": "x", "amount": 10}, **extra)


# --- where a subscription may point ----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://10.0.0.5/hook",
        "http://192.168.1.20/hook",
        "http://172.16.3.4/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://[fd00:ec2::254]/",
        "http://0.0.0.0/hook",
        "http://testserver/hook",  # this service's own host (ALLOWED_HOSTS)
        "ftp://93.184.216.34/hook",
        "http://user:pw@93.184.216.34/hook",
        "not a url",
    ],
)
def test_urls_on_loopback_private_link_local_metadata_or_own_host_are_refused(url, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE = False
    assert webhook_url_problem(url) is not None


def test_a_public_address_is_accepted_and_private_ones_when_allowed(settings):
    settings.WEBHOOKS_ALLOW_PRIVATE = False
    assert webhook_url_problem("https://93.184.216.34/hook") is None
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    assert webhook_url_problem("http://127.0.0.1:8000/hook") is None


def test_create_webhook_command_creates_a_subscription_and_refuses_private_urls(db, settings, capsys):
    settings.WEBHOOKS_ALLOW_PRIVATE = False
    with pytest.raises(CommandError, match="non-public address"):
        call_command("create_webhook", "http://10.1.2.3/hook", "--secret", SECRET, "--kinds", "event.failed")
    with pytest.raises(CommandError):
        call_command("create_webhook", "https://93.184.216.34/hook", "--secret", SECRET, "--kinds", "nope.kind")
    with pytest.raises(CommandError, match="16"):
        call_command("create_webhook", "https://93.184.216.34/hook", "--secret", "short", "--kinds", "event.failed")
    assert not WebhookSubscription.objects.exists()

    call_command(
        "create_webhook", "https://93.184.216.34/hook", "--secret", SECRET,
        "--kinds", "reward_action.completed", "reward_action.failed",
    )  # fmt: skip
    stored = WebhookSubscription.objects.get()
    assert (stored.url, stored.secret, stored.kinds, stored.is_active) == (
        "https://93.184.216.34/hook", SECRET, ["reward_action.completed", "reward_action.failed"], True,
    )  # fmt: skip
    assert str(stored.pk) in capsys.readouterr().out


# --- the outbox ---------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_enqueue_outside_a_transaction_is_refused(subscription):
    with pytest.raises(WebhookOutsideTransaction):
        webhook_deliveries_enqueue(kind="event.failed", payload={})
    assert not WebhookDelivery.objects.exists()


def test_deliveries_are_written_for_active_subscriptions_of_the_kind_and_roll_back_with_their_transaction(
    subscription, receiver
):
    webhook_subscription_create(url=receiver.url, kinds=["reward_action.failed"], secret=SECRET)
    inactive = webhook_subscription_create(url=receiver.url, kinds=["reward_action.completed"], secret=SECRET)
    WebhookSubscription.objects.filter(pk=inactive.pk).update(is_active=False)

    with pytest.raises(RuntimeError), transaction.atomic():
        webhook_deliveries_enqueue(kind="reward_action.completed", payload={"id": "a"})
        raise RuntimeError("what it reports rolled back")
    assert not WebhookDelivery.objects.exists()

    assert enqueue(payload={"id": "b"}) == 1
    delivery = WebhookDelivery.objects.get()
    assert (delivery.subscription_id, delivery.kind, delivery.payload, delivery.status) == (
        subscription.pk, "reward_action.completed", {"id": "b"}, "pending",
    )  # fmt: skip


def test_a_dedupe_key_makes_a_notice_once_per_subscription(subscription):
    enqueue(kind="event.failed", payload={"lot": 1}, dedupe_key="lot-1")
    enqueue(kind="event.failed", payload={"lot": 1}, dedupe_key="lot-1")
    enqueue(kind="event.failed", payload={"lot": 2}, dedupe_key="lot-2")
    assert sorted(WebhookDelivery.objects.values_list("dedupe_key", flat=True)) == ["lot-1", "lot-2"]


# --- event.failed, end to end ----------------------------------------------------------------------------


def test_a_failed_event_is_delivered_signed_after_its_commit(
    subscription, receiver, api, make_rule, post_event, django_capture_on_commit_callbacks
):
    make_rule("broken", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "1 // 0"}])
    with django_capture_on_commit_callbacks(execute=True):
        response = post_event(
            api, external_id="q-1", event_type="quest.completed", source_service="quest_service", actor_user_id="u1"
        )
    assert response.status_code == 201 and response.json()["status"] == "failed"

    delivery = WebhookDelivery.objects.get()
    assert (delivery.kind, delivery.status, delivery.attempts, delivery.last_status_code) == (
        "event.failed", "delivered", 1, 200,
    )  # fmt: skip
    [(headers, body)] = receiver.requests
    assert headers["X-Rewards-Delivery"] == str(delivery.pk)
    assert headers["Content-Type"] == "application/json"
    assert signed_with(SECRET, headers["X-Rewards-Signature"], body)
    assert abs(signatures_of(headers["X-Rewards-Signature"])[0] - time.time()) < 30
    envelope = json.loads(body)
    assert envelope["id"] == str(delivery.pk) and envelope["kind"] == "event.failed"
    event_body = api.get(f"/api/v1/events/{response.json()['id']}").json()
    assert envelope["data"] == event_body
    [attempt] = WebhookAttempt.objects.filter(delivery=delivery)
    assert (attempt.outcome, attempt.status_code) == ("delivered", 200)


def test_a_processed_event_sends_nothing(subscription, receiver, api, make_rule, post_event):
    make_rule("fine", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "5"}])
    response = post_event(
        api, external_id="q-2", event_type="quest.completed", source_service="quest_service", actor_user_id="u1"
    )
    assert response.json()["status"] == "processed"
    assert not WebhookDelivery.objects.exists()


def test_an_event_failed_outside_a_caller_transaction_still_writes_its_delivery(transactional_db, receiver, make_rule):
    """The one-statement ingest path: a failed plan takes the transactional path to write its delivery."""
    from connect.services import event_ingest

    webhook_subscription_create(url=receiver.url, kinds=["event.failed"], secret=SECRET)
    make_rule("broken", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "1 // 0"}])
    result = event_ingest(
        client_name="quest_service",
        data={"external_id": "q-3", "event_type": "quest.completed", "actor_user_id": "u1", "context": {}},
    )
    assert EconomicEvent.objects.get(pk=result.event.pk).status == "failed"
    delivery = WebhookDelivery.objects.get()
    assert delivery.payload["id"] == str(result.event.pk) and delivery.status == "delivered"


# --- retries, the log, replay ---------------------------------------------------------------------------


def test_a_failing_receiver_is_retried_with_backoff_and_every_attempt_is_logged(subscription, receiver, settings):
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    receiver.status = 500
    enqueue()
    delivery = WebhookDelivery.objects.get()

    before = timezone.now()
    assert webhook_deliveries_send_due()["retry"] == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code, delivery.last_error) == (
        "pending", 1, 500, "HTTP 500",
    )  # fmt: skip
    base = settings.WEBHOOK_RETRY_BASE_SECONDS
    assert before + timedelta(seconds=base / 2) <= delivery.next_attempt_at <= timezone.now() + timedelta(seconds=base)
    assert webhook_deliveries_send_due()["claimed"] == 0  # not due yet

    for expected_status in ("pending", "failed"):
        WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
        webhook_deliveries_send_due()
        delivery.refresh_from_db()
        assert delivery.status == expected_status
    assert delivery.attempts == 3
    assert list(WebhookAttempt.objects.filter(delivery=delivery).order_by("started_at").values_list("outcome", flat=True)) == [
        "retry", "retry", "failed",
    ]  # fmt: skip
    assert len(receiver.requests) == 3

    receiver.status = 200
    webhook_delivery_replay(delivery_id=delivery.pk)
    webhook_deliveries_send_due()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("delivered", 1)
    assert WebhookAttempt.objects.filter(delivery=delivery).count() == 4
    assert {headers["X-Rewards-Delivery"] for headers, _ in receiver.requests} == {str(delivery.pk)}


@pytest.mark.parametrize("status, outcome", [(200, "delivered"), (500, "pending")])
def test_a_receiver_s_answer_holding_a_nul_is_kept_with_it_replaced(db, httpserver, settings, status, outcome):
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    httpserver.expect_request("/hook").respond_with_handler(lambda request: Response(b"ok\x00then", status=status))
    webhook_subscription_create(url=httpserver.url_for("/hook"), kinds=["reward_action.completed"], secret=SECRET)
    enqueue()

    webhook_deliveries_send_due()

    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == (outcome, 1)
    assert list(WebhookAttempt.objects.values_list("response_excerpt", flat=True)) == ["ok\ufffdthen"]


def test_redirects_are_not_followed(subscription, receiver):
    receiver.status = 302
    enqueue()
    webhook_deliveries_send_due()
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.last_status_code) == ("pending", 302)
    assert "redirects are not followed" in delivery.last_error
    assert receiver.other_path_hits == 0


def test_a_slow_receiver_times_out_and_is_retried(subscription, receiver, settings):
    settings.WEBHOOK_READ_TIMEOUT_SECONDS = 0.3
    receiver.delay = 1.0
    enqueue()
    started = time.monotonic()
    webhook_deliveries_send_due()
    assert time.monotonic() - started < 1.0
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "pending" and "Timeout" in delivery.last_error


def test_an_unreachable_receiver_is_a_retry_not_a_crash(db, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    webhook_subscription_create(url="http://127.0.0.1:9/hook", kinds=["event.failed"], secret=SECRET)
    enqueue(kind="event.failed")
    assert webhook_deliveries_send_due()["retry"] == 1
    assert "ConnectionError" in WebhookDelivery.objects.get().last_error


def test_a_subscription_that_became_private_is_not_called(subscription, receiver, settings):
    enqueue()
    settings.WEBHOOKS_ALLOW_PRIVATE = False
    webhook_deliveries_send_due()
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "failed" and delivery.last_error.startswith("Refused URL")
    assert receiver.requests == []


def test_a_claim_whose_worker_died_is_taken_over_after_its_lease(subscription, receiver):
    enqueue()
    WebhookDelivery.objects.update(status="sending", attempts=1, lease_until=timezone.now() + timedelta(minutes=1))
    assert webhook_deliveries_send_due()["claimed"] == 0  # another run holds it
    WebhookDelivery.objects.update(lease_until=timezone.now() - timedelta(seconds=1))
    assert webhook_deliveries_send_due()["delivered"] == 1
    assert WebhookDelivery.objects.get().attempts == 2


# --- secrets --------------------------------------------------------------------------------------------


def test_during_a_rotation_both_secrets_sign_then_only_the_new_one(subscription, receiver):
    _, new_secret = webhook_secret_rotate(subscription_id=subscription.pk, grace_seconds=3600)
    enqueue()
    webhook_deliveries_send_due()
    headers, body = receiver.requests[-1]
    assert len(signatures_of(headers["X-Rewards-Signature"])[1]) == 2
    assert signed_with(new_secret, headers["X-Rewards-Signature"], body)
    assert signed_with(SECRET, headers["X-Rewards-Signature"], body)

    WebhookSubscription.objects.filter(pk=subscription.pk).update(
        previous_secret_expires_at=timezone.now() - timedelta(seconds=1)
    )
    enqueue()
    webhook_deliveries_send_due()
    headers, body = receiver.requests[-1]
    assert len(signatures_of(headers["X-Rewards-Signature"])[1]) == 1
    assert signed_with(new_secret, headers["X-Rewards-Signature"], body)
    assert not signed_with(SECRET, headers["X-Rewards-Signature"], body)


def test_subscription_validation_refuses_unknown_kinds_and_short_secrets(db, receiver):
    with pytest.raises(ValidationError):
        webhook_subscription_create(url=receiver.url, kinds=["event.created"], secret=SECRET)
    with pytest.raises(ValidationError):
        webhook_subscription_create(url=receiver.url, kinds=[], secret=SECRET)
    with pytest.raises(ValidationError):
        webhook_subscription_create(url=receiver.url, kinds=["event.failed"], secret="short")
    assert not WebhookSubscription.objects.exists()


# --- batches and concurrent drains --------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_parallel_drains_send_each_delivery_exactly_once(receiver, settings, monkeypatch):
    settings.WEBHOOK_BATCH_SIZE = 7
    receiver.delay = 0.01
    # Tasks run inline in tests: without this the commit's doorbell would send them all at once.
    monkeypatch.setattr(webhook_services, "webhooks_doorbell", lambda: None)
    webhook_subscription_create(url=receiver.url, kinds=["reward_action.completed"], secret=SECRET)
    with transaction.atomic():
        webhook_deliveries_enqueue_many(kind="reward_action.completed", payloads=[({"n": i}, None) for i in range(60)])
    assert WebhookDelivery.objects.filter(status="pending").count() == 60

    errors = []

    def drain():
        try:
            webhook_deliveries_drain(max_seconds=30)
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=drain) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert WebhookDelivery.objects.filter(status="delivered").count() == 60
    sent = [headers["X-Rewards-Delivery"] for headers, _ in receiver.requests]
    assert len(sent) == 60 and set(sent) == {str(pk) for pk in WebhookDelivery.objects.values_list("pk", flat=True)}
    assert WebhookAttempt.objects.count() == 60


# --- reward action outcomes ------------------------------------------------------------------------------


def test_reward_action_outcomes_are_reported_as_the_api_shows_them(
    receiver, api, make_rule, post_event, django_capture_on_commit_callbacks
):
    from connect.models import RewardAction
    from connect.webhooks.emitters import reward_actions_outcome_notify

    webhook_subscription_create(
        url=receiver.url, kinds=["reward_action.completed", "reward_action.failed"], secret=SECRET
    )
    make_rule("two", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "5"}] * 3)
    response = post_event(
        api, external_id="q-9", event_type="quest.completed", source_service="quest_service", actor_user_id="u9"
    )
    done, failed, pending = RewardAction.objects.filter(event_id=response.json()["id"]).order_by("pk")
    now = timezone.now()
    RewardAction.objects.filter(pk=done.pk).update(status="completed", completed_at=now, result={"balance": 5})
    RewardAction.objects.filter(pk=failed.pk).update(status="failed", last_error="gave up")
    RewardAction.objects.filter(pk=pending.pk).update(status="pending")

    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        written = reward_actions_outcome_notify(actions=list(RewardAction.objects.filter(event_id=done.event_id)))
    assert written == 2
    sent = {json.loads(body)["kind"]: json.loads(body)["data"] for _, body in receiver.requests}
    assert sent == {
        "reward_action.completed": api.get(f"/api/v1/reward-actions/{done.pk}").json(),
        "reward_action.failed": api.get(f"/api/v1/reward-actions/{failed.pk}").json(),
    }
    assert sent["reward_action.completed"]["result"] == {"balance": 5}


def test_an_outcome_is_serialized_only_when_some_subscription_wants_its_kind(
    receiver, api, make_rule, post_event, monkeypatch
):
    """Dispatch reports every batch's outcomes; with no subscription for a kind, building its payloads
    (the API's serializer, per action) is work for nobody and is skipped."""
    from connect.models import RewardAction
    from connect.webhooks import emitters

    serialized = []

    class CountingOut(emitters.RewardActionOut):
        def __init__(self, instance, *args, **kwargs):
            serialized.append(instance.pk)
            super().__init__(instance, *args, **kwargs)

    monkeypatch.setattr(emitters, "RewardActionOut", CountingOut)
    make_rule("two", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "5"}] * 2)
    response = post_event(
        api, external_id="q-10", event_type="quest.completed", source_service="quest_service", actor_user_id="u10"
    )
    done, failed = RewardAction.objects.filter(event_id=response.json()["id"]).order_by("pk")
    RewardAction.objects.filter(pk=done.pk).update(status="completed", completed_at=timezone.now())
    RewardAction.objects.filter(pk=failed.pk).update(status="failed", last_error="gave up")
    actions = list(RewardAction.objects.filter(event_id=done.event_id).order_by("pk"))

    with transaction.atomic():
        assert emitters.reward_actions_outcome_notify(actions=actions) == 0
    assert serialized == []

    webhook_subscription_create(url=receiver.url, kinds=["reward_action.completed"], secret=SECRET)
    with transaction.atomic():
        assert emitters.reward_actions_outcome_notify(actions=actions) == 1
    assert serialized == [done.pk]
    assert WebhookDelivery.objects.get().payload["id"] == str(done.pk)
