"""Abuse limits of the API (docs/security.md): throttling, request body size, page size."""

import json
import os
import subprocess
import sys

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from connect.models import EconomicEvent
from points.models import Transaction

pytestmark = pytest.mark.django_db


def error_code(response) -> str:
    return response.json()["error"]["code"]


@pytest.fixture
def tiny_rate(settings):
    """Three requests a minute per caller; counters start empty."""
    settings.API_THROTTLE_RATE = "3/min"
    cache.clear()
    yield
    cache.clear()


# --- defaults ----------------------------------------------------------------------------------


def test_the_limits_are_settings_with_their_documented_defaults():
    """Read from a clean environment: what a deployment gets when it sets none of them."""
    script = (
        "import json; from config import settings as s; print(json.dumps([s.API_THROTTLE_RATE, "
        "s.API_MAX_BODY_BYTES, s.API_PAGE_SIZE, s.API_MAX_PAGE_SIZE, s.API_NUM_PROXIES, "
        "s.REST_FRAMEWORK['DEFAULT_THROTTLE_CLASSES']]))"
    )
    environment = {"PATH": os.environ.get("PATH", ""), "SECRET_KEY": "defaults-probe"}
    output = subprocess.run(
        [sys.executable, "-c", script],
        env=environment,
        cwd=settings_module_root(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(output) == [
        "6000/min",
        256 * 1024,
        50,
        200,
        0,
        ["config.api.throttling.ServiceClientRateThrottle"],
    ]


def settings_module_root() -> str:
    import config

    return os.path.dirname(os.path.dirname(config.__file__))


# --- throttling --------------------------------------------------------------------------------


def test_a_client_over_its_rate_gets_429_with_retry_after_and_nothing_is_done(api_for, tiny_rate):
    api = api_for("busy_service", ["points:credit", "points:read"])
    for n in range(3):
        body = {"external_id": f"c-{n}", "user_id": "u", "amount": 1}
        assert api.post("/internal/credit", body, format="json").status_code == 201

    refused = api.post("/internal/credit", {"external_id": "c-3", "user_id": "u", "amount": 1}, format="json")

    assert refused.status_code == 429
    assert error_code(refused) == "throttled"
    assert 1 <= int(refused["Retry-After"]) <= 61
    assert not Transaction.objects.filter(external_id="c-3").exists()
    # every kind of request counts against the same client budget
    assert api.get("/internal/accounts/u").status_code == 429


def test_each_client_has_its_own_budget(api_for, tiny_rate):
    busy, quiet = api_for("busy_service", ["points:read"]), api_for("quiet_service", ["points:read"])
    for _ in range(3):
        assert busy.get("/internal/accounts/u").status_code == 200
    assert busy.get("/internal/accounts/u").status_code == 429
    assert quiet.get("/internal/accounts/u").status_code == 200


@pytest.mark.parametrize(
    "authorization", [None, "Api-Key not.a-real-key", "Bearer something"], ids=["no key", "bad key", "wrong scheme"]
)
def test_callers_without_a_valid_key_are_throttled_per_address(tiny_rate, authorization):
    """Guessing keys is slowed down like anything else: the 4th attempt from one address is a 429."""
    anonymous = APIClient(REMOTE_ADDR="203.0.113.7")
    if authorization:
        anonymous.credentials(HTTP_AUTHORIZATION=authorization)
    for _ in range(3):
        assert anonymous.get("/internal/accounts/u").status_code == 401
    throttled = anonymous.get("/internal/accounts/u")
    assert throttled.status_code == 429 and int(throttled["Retry-After"]) >= 1
    # another address has its own budget
    assert APIClient(REMOTE_ADDR="203.0.113.8").get("/internal/accounts/u").status_code == 401


def test_a_key_without_the_scope_is_throttled_too(api_for, tiny_rate):
    api = api_for("reader_service", ["events:read"])
    for _ in range(3):
        assert api.post("/internal/debit", {}, format="json").status_code == 403
    assert api.post("/internal/debit", {}, format="json").status_code == 429


def test_a_forged_forwarded_for_header_does_not_buy_a_new_budget(tiny_rate):
    for n in range(3):
        client = APIClient(REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR=f"10.0.0.{n}")
        assert client.get("/internal/accounts/u").status_code == 401
    forged = APIClient(REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR="10.0.0.99")
    assert forged.get("/internal/accounts/u").status_code == 429


def test_behind_a_trusted_proxy_the_address_it_appends_is_the_caller(tiny_rate, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    proxy = "198.51.100.1"
    for _ in range(3):
        client = APIClient(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="spoofed, 203.0.113.10")
        assert client.get("/internal/accounts/u").status_code == 401
    assert (
        APIClient(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="203.0.113.10").get("/internal/accounts/u").status_code == 429
    )
    assert (
        APIClient(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="203.0.113.11").get("/internal/accounts/u").status_code == 401
    )


# --- request body ------------------------------------------------------------------------------


def _event(size: int) -> bytes:
    body = {
        "external_id": "big",
        "event_type": "quest.completed",
        "source_service": "quest_service",
        "actor_user_id": "p",
        "context": {"pad": ""},
    }
    raw = json.dumps(body)
    body["context"]["pad"] = "x" * (size - len(raw))
    encoded = json.dumps(body).encode()
    assert len(encoded) == size
    return encoded


def test_a_body_over_the_limit_is_413_before_it_is_read(api_for, settings):
    settings.API_MAX_BODY_BYTES = 2000
    api = api_for("quest_service", ["events:write"])

    response = api.generic("POST", "/api/v1/events", _event(2001), content_type="application/json")

    assert response.status_code == 413
    assert response.json() == {
        "error": {
            "code": "request_too_large",
            "message": "The request body exceeds 2000 bytes.",
            "details": {"max_bytes": 2000},
        }
    }
    assert response["X-Request-ID"]
    assert not EconomicEvent.objects.exists()


def test_a_body_at_the_limit_is_accepted(api_for, settings):
    settings.API_MAX_BODY_BYTES = 2000
    api = api_for("quest_service", ["events:write"])
    response = api.generic("POST", "/api/v1/events", _event(2000), content_type="application/json")
    assert response.status_code == 201, response.content


def test_the_body_limit_applies_to_every_api_path_and_method(api_for, settings):
    settings.API_MAX_BODY_BYTES = 100
    api = api_for("svc", ["points:read"])
    for method, path in [("GET", "/internal/accounts/u"), ("POST", "/internal/credit"), ("PUT", "/api/v1/nowhere")]:
        response = api.generic(method, path, b"{" + b" " * 200 + b"}", content_type="application/json")
        assert response.status_code == 413, (method, path)


# --- page size ---------------------------------------------------------------------------------


@pytest.fixture
def history(api_for):
    """A reader of ``alice``, whose account has 7 transactions."""
    writer = api_for("shop_service", ["points:credit"])
    for n in range(7):
        assert (
            writer.post(
                "/internal/credit", {"external_id": f"c{n}", "user_id": "alice", "amount": 1}, format="json"
            ).status_code
            == 201
        )
    return api_for("reader_service", ["points:read", "events:read"])


def test_a_page_size_above_the_maximum_is_capped(history, settings):
    settings.API_MAX_PAGE_SIZE = 3
    page = history.get("/internal/accounts/alice/transactions?page_size=1000").json()
    assert len(page["results"]) == 3 and page["next"] is not None


def test_without_page_size_the_default_applies(history, settings):
    settings.API_PAGE_SIZE = 2
    page = history.get("/internal/accounts/alice/transactions").json()
    assert len(page["results"]) == 2


def test_pages_follow_one_another_with_a_capped_size(history, settings):
    settings.API_MAX_PAGE_SIZE = 3
    seen, url = [], "/internal/accounts/alice/transactions?page_size=50"
    while url:
        page = history.get(url).json()
        assert len(page["results"]) <= 3
        seen += [item["external_id"] for item in page["results"]]
        url = page["next"]
    assert seen == [f"c{n}" for n in reversed(range(7))]


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1.5", "", "٣", "1e3"])
@pytest.mark.parametrize("path", ["/internal/accounts/alice/transactions", "/api/v1/reward-actions"])
def test_a_page_size_that_is_not_a_positive_integer_is_400(history, path, value):
    response = history.get(path, {"page_size": value})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "validation_error",
        "message": "The request is invalid.",
        "details": {"page_size": ["A positive integer is required."]},
    }


# --- cursors and filters -----------------------------------------------------------------------


@pytest.mark.parametrize("position", ["garbage", "2025-13-45T99:00:00", "\x00"])
def test_a_forged_cursor_position_is_404_not_a_server_error(history, position):
    from base64 import b64encode
    from urllib.parse import urlencode

    cursor = b64encode(urlencode({"p": position}).encode()).decode()
    for path in ("/internal/accounts/alice/transactions", "/api/v1/reward-actions"):
        response = history.get(path, {"cursor": cursor})
        assert response.status_code == 404 and error_code(response) == "not_found", response.content


@pytest.mark.parametrize("name", ["target_user_id", "status", "reward_type", "event_id"])
def test_an_empty_filter_is_refused_not_ignored(history, name):
    response = history.get("/api/v1/reward-actions", {name: ""})
    assert response.status_code == 400
    assert list(response.json()["error"]["details"]) == [name]
