"""docs/bus.md's step by step, run as written: its publisher puts one event on a real RabbitMQ queue,
the consumer ingests it, and its receiver (a real process on a free port) gets the signed webhook."""

import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.conf import settings

from connect.models import EconomicEvent, WebhookDelivery
from connect.webhooks.services import webhook_subscription_create
from points.models import ServiceClient

from .rabbit import BROKER_URL, ConsumerThread, bus_for_a_test, wait_for

DOC = Path(settings.BASE_DIR) / "docs" / "bus.md"


def heredoc(containing: str) -> str:
    """The Python program of the doc's ``<<'EOF'`` block that contains ``containing``."""
    blocks = re.findall(r"<<'EOF'\n(.*?)\n\s*EOF\n", DOC.read_text(), flags=re.DOTALL)
    [block] = [block for block in blocks if containing in block]
    return textwrap.dedent(block)


def doc_step_secret() -> str:
    return re.search(r"HOOK_SECRET=(\S+)", DOC.read_text()).group(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def bus():
    yield from bus_for_a_test()


@pytest.fixture
def doc_receiver(tmp_path):
    port, log_path = free_port(), tmp_path / "receiver.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", heredoc("class Hook(BaseHTTPRequestHandler)")],
            env={**os.environ, "HOOK_PORT": str(port), "HOOK_SECRET": doc_step_secret(), "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, timeout=15, what="the receiver")
            yield f"http://127.0.0.1:{port}/hook", log_path
        finally:
            process.terminate()
            process.wait(10)


def test_one_published_event_comes_back_as_a_signed_webhook(
    transactional_db, demo_rules, bus, doc_receiver, settings, monkeypatch
):
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    url, receiver_log = doc_receiver
    ServiceClient.objects.create(name="quest_service", scopes=["events:write", "events:read"])
    webhook_subscription_create(
        url=url, secret=doc_step_secret(), kinds=["event.failed", "reward_action.completed", "reward_action.failed"]
    )

    monkeypatch.setenv("EVENTS_QUEUE", bus.name)
    monkeypatch.setenv("EVENTS_BROKER_URL", BROKER_URL)
    exec(compile(heredoc("connection.Producer().publish"), str(DOC), "exec"), {})

    with ConsumerThread(bus.name):
        wait_for(lambda: "event.failed" in receiver_log.read_text(), timeout=30, what="the webhook")
    event = EconomicEvent.objects.get(external_id="quest-42-user-7")
    assert event.status == "failed" and "quest_completed_rewards" in event.error
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "delivered"
    [line] = [line for line in receiver_log.read_text().splitlines() if "signature" in line.lower()]
    assert line.startswith(f"{delivery.pk} signature ok ")
    assert bus.ready() == 0 and bus.ready(dead=True) == 0
