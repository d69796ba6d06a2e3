"""Every id in every response is a canonical UUID (lowercase, hyphenated 8-4-4-4-12), on PostgreSQL
and on the embedded SQLite default alike (SPEC §4): posted, replayed, read and listed.

The SQLite run is a subprocess with the embedded default's settings on a scratch database file: the
same code as ``make run`` serves, exercised through Django's test client.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

CANONICAL = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ID_KEYS = {"id", "event_id", "transaction_id", "hold_id", "lot_id", "reverses"}
ROOT = Path(__file__).resolve().parents[2]


def ids_in(value, path="$") -> list[tuple[str, object]]:
    """(where, value) of every id-named key anywhere in a response body."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ID_KEYS and item is not None:
                found.append((f"{path}.{key}", item))
            found += ids_in(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += ids_in(item, f"{path}[{index}]")
    return found


def exercise(key: str) -> dict[str, dict]:
    """Post, replay, get and list events, and credit, hold, capture and release over HTTP; every body."""
    from rules.services import rule_save_from_dict

    rule_save_from_dict(
        data={
            "code": "ids_rule", "name": "ids", "event_type": "quest.completed",
            "rewards": [{"target": "actor", "reward_type": "points", "amount": "5"}],
        }
    )  # fmt: skip
    http = Client(HTTP_AUTHORIZATION=f"Api-Key {key}")

    def call(method, path, body=None):
        response = getattr(http, method)(path, body, content_type="application/json") if body else http.get(path)
        assert response.status_code in (200, 201), (path, response.status_code, response.content)
        return response.json()

    event = {
        "external_id": "e1",
        "event_type": "quest.completed",
        "source_service": "ids_client",
        "actor_user_id": "u1",
    }
    bodies = {"event post": call("post", "/api/v1/events", event)}
    bodies["event replay"] = call("post", "/api/v1/events", event)
    event_id = bodies["event post"]["id"]
    bodies["event get"] = call("get", f"/api/v1/events/{event_id}")
    bodies["actions list"] = call("get", f"/api/v1/reward-actions?event_id={event_id}")
    action_id = bodies["event post"]["reward_actions"][0]["id"]
    bodies["action get"] = call("get", f"/api/v1/reward-actions/{action_id}")
    credit = {"external_id": "c1", "user_id": "u2", "amount": 100}
    bodies["credit"] = call("post", "/internal/credit", credit)
    bodies["credit replay"] = call("post", "/internal/credit", credit)
    hold = {"external_id": "h1", "user_id": "u2", "amount": 10}
    bodies["hold"] = call("post", "/internal/hold", hold)
    bodies["hold replay"] = call("post", "/internal/hold", hold)
    capture = {"external_id": "cap1", "hold_id": bodies["hold"]["hold_id"], "amount": 4}
    bodies["capture"] = call("post", "/internal/capture", capture)
    bodies["capture replay"] = call("post", "/internal/capture", capture)
    second = call("post", "/internal/hold", {"external_id": "h2", "user_id": "u2", "amount": 1})
    bodies["release"] = call("post", "/internal/release", {"external_id": "r1", "hold_id": second["hold_id"]})
    bodies["transactions"] = call("get", "/internal/accounts/u2/transactions")
    bodies["account"] = call("get", "/internal/accounts/u1")
    return bodies


def assert_canonical(bodies: dict[str, dict]) -> None:
    bad = {
        f"{name} {where}": value
        for name, body in bodies.items()
        for where, value in ids_in(body)
        if not (isinstance(value, str) and CANONICAL.match(value))
    }
    assert bad == {}
    # The same object has the same id wherever it appears.
    assert bodies["event post"]["id"] == bodies["event replay"]["id"] == bodies["event get"]["id"]
    assert bodies["credit"]["transaction_id"] == bodies["credit replay"]["transaction_id"]
    assert bodies["hold"]["hold_id"] == bodies["capture"]["hold_id"]
    listed = {item["transaction_id"] for item in bodies["transactions"]["results"]}
    assert {bodies["credit"]["transaction_id"], bodies["capture"]["transaction_id"]} <= listed


@pytest.mark.django_db(transaction=True)
def test_ids_are_canonical_on_postgresql(make_client):
    _, key = make_client("ids_client")
    bodies = exercise(key)
    assert len(ids_in(bodies)) > 20
    assert_canonical(bodies)


_SQLITE_RUN = """
import json, django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from points.models import SCOPES, ServiceClient, ServiceClientKey
from tests.contract.test_id_format import exercise
client = ServiceClient.objects.create(name="ids_client", scopes=list(SCOPES))
_, key = ServiceClientKey.objects.create_key(client=client, name="k")
print(json.dumps(exercise(key)))
"""


def test_ids_are_canonical_on_the_embedded_sqlite_default(tmp_path):
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(("DATABASE_URL", "CELERY_", "CACHE_"))
    }
    environment.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=f"sqlite:///{tmp_path / 'embedded.sqlite3'}",
        SECRET_KEY="id-format-test",
        ALLOWED_HOSTS="testserver",
        SECURE_SSL_REDIRECT="0",
        LOG_LEVEL="ERROR",
    )
    run = subprocess.run(
        [sys.executable, "-c", _SQLITE_RUN], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    bodies = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(ids_in(bodies)) > 20
    assert_canonical(bodies)
