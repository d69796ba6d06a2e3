"""Structured logs and Prometheus metrics (docs/security.md "Logging", config/metrics.py).

Logs: one JSON line per request, per event ingested and per dispatch attempt, each with the ids
that correlate them; never an API key, the Authorization header, event context, ledger metadata,
channel tokens or what a receiving service answered. Metrics: ledger operations by kind and
outcome, dispatch attempts by channel and outcome, as scraped from /metrics.
"""

import io
import json
import logging

import pytest
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from config.logging import JsonFormatter
from connect.models import RewardAction
from rules.services import rule_save_from_dict

pytestmark = pytest.mark.django_db

CONTEXT_SECRET = "ctx-personal-4711"
METADATA_SECRET = "meta-personal-0815"
NFT_TOKEN = "nft-bearer-token-secret"
RECEIVER_ANSWER = "receiver-says-private-things"


@pytest.fixture
def log_lines():
    """Every line any logger writes at INFO or above, formatted as in production."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)

    def lines() -> list[dict]:
        handler.flush()
        raw = [line for line in stream.getvalue().splitlines() if line.strip()]
        parsed = [json.loads(line) for line in raw]  # every line is one JSON object
        for line in parsed:
            assert {"ts", "level", "logger", "message"} <= set(line), line
        return parsed

    lines.text = lambda: stream.getvalue()
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


@pytest.fixture
def rules(db):
    rule_save_from_dict(
        data={
            "code": "log_rule", "name": "log rule", "event_type": "quest.completed",
            "rewards": [
                {"target": "actor", "reward_type": "points", "amount": "context.points"},
                {"target": "actor", "reward_type": "nft", "amount": "1", "params": {"badge_type": "b"}},
            ],
        }
    )  # fmt: skip


def of(lines: list[dict], logger: str, message: str | None = None) -> list[dict]:
    return [line for line in lines if line["logger"] == logger and (message is None or line["message"] == message)]


def test_requests_ingestion_and_dispatch_each_log_one_correlated_json_line(
    log_lines, rules, make_client, httpserver, settings, django_capture_on_commit_callbacks
):
    settings.NFT_SERVICE_URL = httpserver.url_for("")
    settings.NFT_SERVICE_TOKEN = NFT_TOKEN
    httpserver.expect_request("/badges").respond_with_data(RECEIVER_ANSWER, status=503)
    _, key = make_client("quest_service", ["events:write", "points:credit"])
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    body = {
        "external_id": "e-1", "event_type": "quest.completed", "source_service": "quest_service",
        "actor_user_id": "alice", "context": {"points": 7, "email": CONTEXT_SECRET},
    }  # fmt: skip

    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/v1/events", body, format="json", HTTP_X_REQUEST_ID="corr-123")
    assert response.status_code == 201 and response["X-Request-ID"] == "corr-123"
    event_id = response.json()["id"]
    actions = {a.reward_type: str(a.pk) for a in RewardAction.objects.filter(event_id=event_id)}
    credit = api.post(
        "/internal/credit",
        {"external_id": "c-1", "user_id": "bob", "amount": 5, "metadata": {"note": METADATA_SECRET}},
        format="json",
    )
    assert credit.status_code == 201
    bad = APIClient().get("/internal/accounts/bob", HTTP_AUTHORIZATION="Api-Key AbCdEfGh.not-a-real-secret")
    assert bad.status_code == 401

    lines = log_lines()

    requests = of(lines, "api.request", "request")
    assert [(r["method"], r["path"], r["status"], r["client"]) for r in requests] == [
        ("POST", "/api/v1/events", 201, "quest_service"),
        ("POST", "/internal/credit", 201, "quest_service"),
        ("GET", "/internal/accounts/bob", 401, None),
    ]
    for line in requests:
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
        assert line["request_id"] and line["level"] == "INFO"
    assert requests[0]["request_id"] == "corr-123"
    assert requests[1]["request_id"] == credit["X-Request-ID"] != requests[2]["request_id"]

    (ingested,) = of(lines, "connect.ingest", "event ingested")
    assert ingested == {
        **{k: ingested[k] for k in ("ts", "level", "logger", "message")},
        "event_id": event_id, "event_type": "quest.completed", "source_service": "quest_service",
        "status": "processed", "actions": 2, "request_id": "corr-123",
    }  # fmt: skip

    attempts = {line["channel"]: line for line in of(lines, "connect.dispatch", "dispatch attempt")}
    assert set(attempts) == {"points", "nft"}
    for channel, outcome in (("points", "completed"), ("nft", "retry")):
        line = attempts[channel]
        assert (line["action_id"], line["event_id"], line["outcome"], line["attempt"]) == (
            actions[channel], event_id, outcome, 1,
        )  # fmt: skip
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert attempts["nft"]["retry_in"] > 0

    text = log_lines.text()
    for secret in (key, key.split(".")[0], "Api-Key", "AbCdEfGh", "not-a-real-secret", CONTEXT_SECRET,
                   METADATA_SECRET, NFT_TOKEN, RECEIVER_ANSWER):  # fmt: skip
        assert secret not in text, secret
    assert RECEIVER_ANSWER in RewardAction.objects.get(pk=actions["nft"]).last_error  # kept for staff, not logged


def test_a_failed_attempt_logs_the_outcome_without_the_receivers_answer(
    log_lines, rules, make_client, httpserver, settings, django_capture_on_commit_callbacks
):
    settings.NFT_SERVICE_URL = httpserver.url_for("")
    httpserver.expect_request("/badges").respond_with_data(RECEIVER_ANSWER, status=400)
    _, key = make_client("quest_service", ["events:write"])
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    body = {"external_id": "e", "event_type": "quest.completed", "source_service": "quest_service",
            "actor_user_id": "alice", "context": {"points": 0}}  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post("/api/v1/events", body, format="json").status_code == 201

    lines = log_lines()
    (attempt,) = of(lines, "connect.dispatch", "dispatch attempt")
    assert (attempt["channel"], attempt["outcome"], attempt["attempt"]) == ("nft", "failed", 1)
    (warning,) = [line for line in of(lines, "connect.dispatch") if line["level"] == "WARNING"]
    assert warning["action_id"] == attempt["action_id"] and warning["event_id"] == attempt["event_id"]
    assert RECEIVER_ANSWER not in log_lines.text()


def test_lines_written_during_a_request_carry_its_id_whatever_the_logger(log_lines, api, monkeypatch):
    from points import api as points_api

    original = points_api.selectors.account_totals

    def noisy(**kwargs):
        logging.getLogger("somewhere.else").warning("something worth noting")
        return original(**kwargs)

    monkeypatch.setattr(points_api.selectors, "account_totals", noisy)
    response = api.get("/internal/accounts/alice", HTTP_X_REQUEST_ID="abc-42")

    (noted,) = of(log_lines(), "somewhere.else")
    assert noted["request_id"] == "abc-42" == response["X-Request-ID"]
    logging.getLogger("somewhere.else").warning("outside any request")
    assert "request_id" not in of(log_lines(), "somewhere.else")[-1]


@pytest.mark.parametrize("given", ["x" * 65, "two words", "new\nline", "ünïcode"])
def test_an_unusable_request_id_from_the_caller_is_replaced(api, given):
    response = api.get("/internal/accounts/alice", HTTP_X_REQUEST_ID=given)
    assert response["X-Request-ID"] != given and len(response["X-Request-ID"]) == 32


def test_sensitive_fields_passed_to_a_logger_are_redacted():
    record = logging.LogRecord("any", logging.INFO, __file__, 1, "msg", (), None)
    for name, value in {
        "authorization": "Api-Key abc.def", "api_key": "abc.def", "context": {"email": CONTEXT_SECRET},
        "metadata": {"note": METADATA_SECRET}, "token": NFT_TOKEN, "body": "{...}", "event_id": "e-1",
    }.items():  # fmt: skip
        setattr(record, name, value)

    line = json.loads(JsonFormatter().format(record))

    assert line["event_id"] == "e-1"
    for name in ("authorization", "api_key", "context", "metadata", "token", "body"):
        assert line[name] == "[redacted]"


# --- metrics -----------------------------------------------------------------------------------


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(client) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    return response.content.decode()


def test_ledger_operations_are_counted_by_kind_and_outcome(api, client):
    counted = [
        ("credit", "performed"), ("credit", "replayed"), ("credit", "idempotency_conflict"),
        ("debit", "insufficient_funds"), ("hold", "performed"), ("capture", "performed"),
        ("capture", "hold_not_active"), ("release", "not_found"),
    ]  # fmt: skip
    before = {key: sample("rewards_ledger_operations_total", kind=key[0], outcome=key[1]) for key in counted}

    credit = {"external_id": "m-c", "user_id": "mia", "amount": 50}
    assert api.post("/internal/credit", credit, format="json").status_code == 201
    assert api.post("/internal/credit", credit, format="json").status_code == 200
    assert api.post("/internal/credit", {**credit, "amount": 51}, format="json").status_code == 409
    assert api.post("/internal/debit", {**credit, "external_id": "m-d", "amount": 99}, format="json").status_code == 422
    hold = api.post("/internal/hold", {"external_id": "m-h", "user_id": "mia", "amount": 10}, format="json").json()
    settle = {"hold_id": hold["hold_id"]}
    assert api.post("/internal/capture", {**settle, "external_id": "m-cap"}, format="json").status_code == 201
    assert api.post("/internal/capture", {**settle, "external_id": "m-cap2"}, format="json").status_code == 422
    unknown = {"external_id": "m-r", "hold_id": "00000000-0000-0000-0000-000000000000"}
    assert api.post("/internal/release", unknown, format="json").status_code == 404

    for key in counted:
        assert sample("rewards_ledger_operations_total", kind=key[0], outcome=key[1]) == before[key] + 1, key
    assert 'rewards_ledger_operations_total{kind="debit",outcome="insufficient_funds"}' in scrape(client)


def test_dispatch_attempts_are_timed_by_channel_and_outcome(
    rules, make_client, httpserver, settings, client, django_capture_on_commit_callbacks
):
    settings.NFT_SERVICE_URL = httpserver.url_for("")
    httpserver.expect_request("/badges").respond_with_data("busy", status=503)
    before = {
        (channel, outcome): sample("rewards_dispatch_seconds_count", channel=channel, outcome=outcome)
        for channel, outcome in (("points", "completed"), ("nft", "retry"))
    }
    _, key = make_client("quest_service", ["events:write"])
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    body = {"external_id": "e", "event_type": "quest.completed", "source_service": "quest_service",
            "actor_user_id": "alice", "context": {"points": 3}}  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post("/api/v1/events", body, format="json").status_code == 201

    for (channel, outcome), count in before.items():
        assert sample("rewards_dispatch_seconds_count", channel=channel, outcome=outcome) == count + 1
    assert sample("rewards_dispatch_seconds_sum", channel="points", outcome="completed") > 0
    text = scrape(client)
    assert 'rewards_dispatch_seconds_bucket{channel="nft",le="0.005",outcome="retry"}' in text
    assert 'rewards_ledger_operations_total{kind="credit",outcome="performed"}' in text
