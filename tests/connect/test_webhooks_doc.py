"""The signature check that docs/webhooks.md gives receivers, run as written against real deliveries."""

import re
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import transaction
from werkzeug import Request, Response

from connect.models import WebhookDelivery
from connect.webhooks.services import (
    webhook_deliveries_enqueue,
    webhook_deliveries_send_due,
    webhook_secret_rotate,
    webhook_subscription_create,
)

DOC = Path(settings.BASE_DIR) / "docs" / "webhooks.md"
SECRET = "doc-secret-0123456789abcdef"


def enqueue(payload: dict) -> None:
    with transaction.atomic():
        webhook_deliveries_enqueue(kind="event.failed", payload=payload)


def doc_snippet() -> dict:
    """Execute the doc's Python block that defines ``verify_rewards_signature``; return its namespace."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    [snippet] = [block for block in blocks if "def verify_rewards_signature" in block]
    namespace: dict = {}
    exec(compile(snippet, str(DOC), "exec"), namespace)
    return namespace


@pytest.fixture
def received(httpserver, settings, db):
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    requests = []

    def keep(request: Request) -> Response:
        requests.append((request.headers.get("X-Rewards-Signature"), request.get_data()))
        return Response("ok")

    httpserver.expect_request("/in").respond_with_handler(keep)
    subscription = webhook_subscription_create(url=httpserver.url_for("/in"), kinds=["event.failed"], secret=SECRET)
    return subscription, requests


def test_the_documented_check_accepts_a_real_delivery_and_refuses_tampering(received):
    subscription, requests = received
    verify = doc_snippet()["verify_rewards_signature"]
    enqueue({"id": "e-1", "status": "failed"})
    webhook_deliveries_send_due()
    assert WebhookDelivery.objects.get().status == "delivered"
    [(header, body)] = requests

    assert verify(SECRET, header, body) is True
    assert verify("another-secret-entirely", header, body) is False
    assert verify(SECRET, header, body.replace(b"e-1", b"e-2")) is False
    assert verify(SECRET, header.replace("v1=", "v1=0"), body) is False
    assert verify(SECRET, header, body, tolerance=-1) is False  # a stale timestamp is refused
    old = f"t={int(time.time()) - 3600}," + header.split(",", 1)[1]
    assert verify(SECRET, old, body) is False


def test_the_documented_check_accepts_either_secret_during_a_rotation(received):
    subscription, requests = received
    verify = doc_snippet()["verify_rewards_signature"]
    _, new_secret = webhook_secret_rotate(subscription_id=subscription.pk, grace_seconds=600)
    enqueue({"id": "e-2"})
    webhook_deliveries_send_due()
    [(header, body)] = requests
    assert verify(new_secret, header, body) and verify(SECRET, header, body)
