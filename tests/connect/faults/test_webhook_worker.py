"""Webhook deliveries sent by real Celery worker processes: the doorbell rung after commit goes through
Redis, and beat's sweep sends what a lost doorbell or a failed try left behind."""

import threading

import pytest
from django.db import transaction
from werkzeug import Request, Response

from connect.models import WebhookAttempt, WebhookDelivery
from connect.webhooks import services as webhook_services
from connect.webhooks.services import webhook_deliveries_enqueue, webhook_subscription_create

from .conftest import wait_for

WEBHOOK_ENV = {
    "WEBHOOKS_ALLOW_PRIVATE": "1",
    "WEBHOOK_SWEEP_INTERVAL_SECONDS": "1",
    "WEBHOOK_RETRY_BASE_SECONDS": "0.5",
    "WEBHOOK_RETRY_MAX_SECONDS": "1",
}


class Hook:
    def __init__(self, server):
        self.server = server
        self.statuses: list[int] = []  # answers to give, in order; then 200
        self.received: list[str] = []
        self._lock = threading.Lock()
        server.expect_request("/hook").respond_with_handler(self._handle)

    def _handle(self, request: Request) -> Response:
        with self._lock:
            self.received.append(request.headers["X-Rewards-Delivery"])
            status = self.statuses.pop(0) if self.statuses else 200
        return Response("", status=status)


@pytest.fixture
def hook(httpserver, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    receiver = Hook(httpserver)
    webhook_subscription_create(url=httpserver.url_for("/hook"), kinds=["event.failed"], secret="w" * 20)
    return receiver


def _enqueue(payload: dict) -> None:
    with transaction.atomic():
        webhook_deliveries_enqueue(kind="event.failed", payload=payload)


def test_the_doorbell_after_commit_has_a_worker_send_the_delivery(start_worker, broker, hook):
    start_worker(env=WEBHOOK_ENV)
    _enqueue({"id": "e-1"})
    delivery = WebhookDelivery.objects.get()
    wait_for(lambda: WebhookDelivery.objects.get().status == "delivered", timeout=30, what="the delivery")
    assert hook.received == [str(delivery.pk)]


def test_beat_sends_what_a_lost_doorbell_and_a_failed_try_left(start_worker, broker, hook, monkeypatch):
    monkeypatch.setattr(webhook_services, "webhooks_doorbell", lambda: None)  # the broker message is lost
    hook.statuses = [503]
    _enqueue({"id": "e-2"})
    start_worker(beat=True, env=WEBHOOK_ENV)
    wait_for(lambda: WebhookDelivery.objects.get().status == "delivered", timeout=60, what="the retried delivery")
    delivery = WebhookDelivery.objects.get()
    assert delivery.attempts == 2
    assert list(WebhookAttempt.objects.order_by("started_at").values_list("outcome", "status_code")) == [
        ("retry", 503),
        ("delivered", 200),
    ]
    assert hook.received == [str(delivery.pk)] * 2
