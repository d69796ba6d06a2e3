"""The ledger over HTTP (SPEC §3, §4, §9): bodies, status codes, auth, scopes, refusals, idempotency."""

import json
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.test import APIClient

from points.models import SCOPES, Hold, ServiceClient, ServiceClientKey, Transaction

from .conftest import assert_ledger_ok, totals

pytestmark = pytest.mark.django_db

ERROR_KEYS = {"code", "message", "details"}


def assert_error(response, status: int, code: str) -> dict:
    """The response is exactly the SPEC §4 error body; returns its details."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == ERROR_KEYS
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    assert b"Traceback" not in response.content and b"SELECT" not in response.content
    return body["error"]["details"]


def post(api: APIClient, path: str, body) -> object:
    return api.post(path, body, format="json")


def raw_post(api: APIClient, path: str, raw: str | bytes):
    return api.generic("POST", path, raw, content_type="application/json")


@pytest.fixture
def funded(api):
    """The default client's user ``alice`` with 1000 points."""
    response = post(api, "/internal/credit", {"external_id": "fund", "user_id": "alice", "amount": 1000})
    assert response.status_code == 201
    return api


def place_hold(api, amount: int, *, user_id: str = "alice", external_id: str | None = None, **extra) -> dict:
    body = {"external_id": external_id or f"hold-{uuid.uuid4()}", "user_id": user_id, "amount": amount, **extra}
    response = post(api, "/internal/hold", body)
    assert response.status_code == 201, response.content
    return response.json()


# --- operations --------------------------------------------------------------------------------


def test_credit_returns_201_with_the_new_balance(api):
    response = post(
        api,
        "/internal/credit",
        {"external_id": "c-1", "user_id": "alice", "amount": 150, "reason": "quest", "metadata": {"quest": 7}},
    )

    assert response.status_code == 201
    body = response.json()
    txn = Transaction.objects.get(external_id="c-1")
    assert body == {
        "transaction_id": str(txn.pk), "user_id": "alice", "amount": 150,
        "balance": 150, "held": 0, "available": 150,
    }  # fmt: skip
    assert (txn.kind, txn.reason, txn.metadata, txn.source) == ("credit", "quest", {"quest": 7}, "quest_service")
    assert totals("alice") == (150, 0, 150)


def test_debit_returns_201_with_the_new_balance(funded):
    response = post(funded, "/internal/debit", {"external_id": "d-1", "user_id": "alice", "amount": 300})

    assert response.status_code == 201
    txn = Transaction.objects.get(external_id="d-1")
    assert response.json() == {
        "transaction_id": str(txn.pk), "user_id": "alice", "amount": 300,
        "balance": 700, "held": 0, "available": 700,
    }  # fmt: skip
    assert txn.kind == "debit"


def test_hold_returns_201_with_default_expiry_of_fifteen_minutes(funded):
    before = timezone.now()
    response = post(funded, "/internal/hold", {"external_id": "h-1", "user_id": "alice", "amount": 200})

    assert response.status_code == 201
    body = response.json()
    hold = Hold.objects.get()
    txn = Transaction.objects.get(external_id="h-1")
    assert body == {
        "hold_id": str(hold.pk), "transaction_id": str(txn.pk), "user_id": "alice", "amount": 200,
        "status": "active", "expires_at": body["expires_at"], "balance": 1000, "held": 200, "available": 800,
    }  # fmt: skip
    expires_at = parse_datetime(body["expires_at"])
    assert expires_at == hold.expires_at
    assert before + timedelta(minutes=15) <= expires_at <= timezone.now() + timedelta(minutes=15)


def test_hold_with_custom_expires_in(funded):
    body = place_hold(funded, 100, expires_in=60)
    hold = Hold.objects.get(pk=body["hold_id"])
    assert hold.expires_at == hold.created_at + timedelta(seconds=60)
    assert parse_datetime(body["expires_at"]) == hold.expires_at


def test_full_capture(funded):
    hold_id = place_hold(funded, 200)["hold_id"]

    response = post(funded, "/internal/capture", {"external_id": "cap-1", "hold_id": hold_id})

    assert response.status_code == 201
    txn = Transaction.objects.get(external_id="cap-1")
    assert response.json() == {
        "transaction_id": str(txn.pk), "hold_id": hold_id, "user_id": "alice", "captured": 200, "released": 0,
        "balance": 800, "held": 0, "available": 800,
    }  # fmt: skip
    assert Hold.objects.get(pk=hold_id).status == "captured"


def test_partial_capture_releases_the_rest(funded):
    hold_id = place_hold(funded, 200)["hold_id"]

    response = post(funded, "/internal/capture", {"external_id": "cap-1", "hold_id": hold_id, "amount": 50})

    assert response.status_code == 201
    body = response.json()
    assert (body["captured"], body["released"]) == (50, 150)
    assert (body["balance"], body["held"], body["available"]) == (950, 0, 950)
    hold = Hold.objects.get(pk=hold_id)
    assert (hold.status, hold.captured_amount, hold.released_amount) == ("captured", 50, 150)
    assert_ledger_ok()


def test_release(funded):
    hold_id = place_hold(funded, 200)["hold_id"]

    response = post(funded, "/internal/release", {"external_id": "rel-1", "hold_id": hold_id})

    assert response.status_code == 201
    txn = Transaction.objects.get(external_id="rel-1")
    assert response.json() == {
        "transaction_id": str(txn.pk), "hold_id": hold_id, "user_id": "alice", "released": 200,
        "balance": 1000, "held": 0, "available": 1000,
    }  # fmt: skip
    assert Hold.objects.get(pk=hold_id).status == "released"


def test_account_read(funded):
    place_hold(funded, 250)
    response = funded.get("/internal/accounts/alice")
    assert response.status_code == 200
    assert response.json() == {
        "user_id": "alice", "balance": 1000, "held": 250, "available": 750, "expiring_soon": 0, "next_expiry": None,
    }  # fmt: skip


def test_account_read_of_an_unknown_user_is_zeros(api):
    response = api.get("/internal/accounts/somebody-new")
    assert response.status_code == 200
    assert response.json() == {
        "user_id": "somebody-new", "balance": 0, "held": 0, "available": 0, "expiring_soon": 0, "next_expiry": None,
    }  # fmt: skip
    assert totals("somebody-new") == (0, 0, 0)


def test_history_is_newest_first_with_the_balance_after_each_item(funded):
    post(funded, "/internal/debit", {"external_id": "d-1", "user_id": "alice", "amount": 100, "reason": "shop"})
    hold_id = place_hold(funded, 300, external_id="h-1")["hold_id"]
    post(funded, "/internal/capture", {"external_id": "cap-1", "hold_id": hold_id, "amount": 100})

    response = funded.get("/internal/accounts/alice/transactions")

    assert response.status_code == 200
    items = response.json()["results"]
    assert [(i["kind"], i["external_id"], i["amount"]) for i in items] == [
        ("capture", "cap-1", 100), ("hold", "h-1", 300), ("debit", "d-1", 100), ("credit", "fund", 1000),
    ]  # fmt: skip
    assert [(i["balance_after"], i["held_after"], i["available_after"]) for i in items] == [
        (800, 0, 800), (900, 300, 600), (900, 0, 900), (1000, 0, 1000),
    ]  # fmt: skip
    first = items[0]
    assert set(first) >= {"transaction_id", "kind", "amount", "reason", "metadata", "external_id", "created_at"}
    assert first["hold_id"] == hold_id
    assert items[2]["reason"] == "shop"
    assert first["transaction_id"] == str(Transaction.objects.get(external_id="cap-1").pk)


def test_history_is_cursor_paginated_without_gaps_or_repeats(api):
    for n in range(7):
        post(api, "/internal/credit", {"external_id": f"c-{n}", "user_id": "alice", "amount": n + 1})
    post(api, "/internal/credit", {"external_id": "other", "user_id": "bob", "amount": 5})

    seen, url = [], "/internal/accounts/alice/transactions?page_size=3"
    while url:
        page = api.get(url)
        assert page.status_code == 200
        body = page.json()
        assert len(body["results"]) <= 3
        seen += [item["external_id"] for item in body["results"]]
        url = body["next"]

    assert seen == [f"c-{n}" for n in reversed(range(7))]
    assert api.get("/internal/accounts/nobody/transactions").json()["results"] == []


def test_history_with_a_bad_cursor_is_a_json_error(api):
    assert_error(api.get("/internal/accounts/alice/transactions?cursor=garbage"), 404, "not_found")


# --- idempotency -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/internal/credit", "/internal/debit", "/internal/hold"])
def test_a_replay_returns_200_with_the_identical_original_body(funded, path):
    body = {"external_id": "op-1", "user_id": "alice", "amount": 100, "reason": "r", "metadata": {"k": [1, 2]}}
    first = post(funded, path, body)
    assert first.status_code == 201
    post(funded, "/internal/credit", {"external_id": "later", "user_id": "alice", "amount": 5})
    count = Transaction.objects.count()

    again = post(funded, path, body)

    assert again.status_code == 200
    assert again.content == first.content
    assert Transaction.objects.count() == count


@pytest.mark.parametrize("path", ["/internal/capture", "/internal/release"])
def test_a_settlement_replay_returns_200_with_the_identical_original_body(funded, path):
    hold_id = place_hold(funded, 100)["hold_id"]
    body = {"external_id": "settle-1", "hold_id": hold_id}
    first = post(funded, path, body)
    assert first.status_code == 201
    balance = totals("alice")

    again = post(funded, path, body)

    assert again.status_code == 200
    assert again.content == first.content
    assert totals("alice") == balance


@pytest.mark.parametrize("path", ["/internal/credit", "/internal/debit", "/internal/hold"])
def test_reusing_an_external_id_with_a_different_payload_is_409_and_changes_nothing(funded, path, snapshot):
    assert post(funded, path, {"external_id": "op-1", "user_id": "alice", "amount": 100}).status_code == 201
    before = snapshot()

    response = post(funded, path, {"external_id": "op-1", "user_id": "alice", "amount": 101})

    assert assert_error(response, 409, "idempotency_conflict") == {"external_id": "op-1"}
    assert snapshot() == before


def test_reusing_a_capture_external_id_with_a_different_amount_is_409(funded):
    hold_id = place_hold(funded, 100)["hold_id"]
    assert post(funded, "/internal/capture", {"external_id": "c", "hold_id": hold_id, "amount": 10}).status_code == 201
    response = post(funded, "/internal/capture", {"external_id": "c", "hold_id": hold_id, "amount": 20})
    assert_error(response, 409, "idempotency_conflict")


def test_external_ids_belong_to_each_client(api_for):
    quest, shop = api_for("quest_service"), api_for("shop_service")
    body = {"external_id": "same", "user_id": "alice", "amount": 10}
    assert post(quest, "/internal/credit", body).status_code == 201
    assert post(shop, "/internal/credit", body).status_code == 201
    assert totals("alice") == (20, 0, 20)


def test_a_refused_debit_does_not_use_up_its_external_id(api, snapshot):
    post(api, "/internal/credit", {"external_id": "c-1", "user_id": "alice", "amount": 50})
    before = snapshot()
    body = {"external_id": "d-1", "user_id": "alice", "amount": 80}

    details = assert_error(post(api, "/internal/debit", body), 422, "insufficient_funds")

    assert details == {"available": 50, "requested": 80}
    assert snapshot() == before
    post(api, "/internal/credit", {"external_id": "c-2", "user_id": "alice", "amount": 50})
    retried = post(api, "/internal/debit", body)
    assert retried.status_code == 201
    assert retried.json()["balance"] == 20


def test_an_invalid_request_does_not_use_up_its_external_id(api, snapshot):
    before = snapshot()
    assert_error(
        post(api, "/internal/credit", {"external_id": "c-1", "user_id": "alice", "amount": 0}), 400, "validation_error"
    )
    assert snapshot() == before
    assert post(api, "/internal/credit", {"external_id": "c-1", "user_id": "alice", "amount": 5}).status_code == 201


# --- business refusals -------------------------------------------------------------------------


def test_hold_beyond_available_is_422(funded, snapshot):
    place_hold(funded, 900)
    before = snapshot()
    response = post(funded, "/internal/hold", {"external_id": "h-x", "user_id": "alice", "amount": 101})
    assert assert_error(response, 422, "insufficient_funds") == {"available": 100, "requested": 101}
    assert snapshot() == before


def test_debit_of_an_unknown_user_is_422(api, snapshot):
    before = snapshot()
    assert_error(
        post(api, "/internal/debit", {"external_id": "d", "user_id": "ghost", "amount": 1}), 422, "insufficient_funds"
    )
    assert snapshot() == before


def test_capture_exceeding_the_hold_is_422(funded, snapshot):
    hold_id = place_hold(funded, 100)["hold_id"]
    before = snapshot()
    response = post(funded, "/internal/capture", {"external_id": "c", "hold_id": hold_id, "amount": 101})
    assert assert_error(response, 422, "capture_exceeds_hold") == {"held": 100, "requested": 101}
    assert snapshot() == before


@pytest.mark.parametrize("state", ["captured", "released", "expired_unswept"])
@pytest.mark.parametrize("path", ["/internal/capture", "/internal/release"])
def test_a_hold_no_longer_active_is_422(funded, state, path, snapshot):
    hold_id = place_hold(funded, 100)["hold_id"]
    if state == "captured":
        post(funded, "/internal/capture", {"external_id": "first", "hold_id": hold_id})
    elif state == "released":
        post(funded, "/internal/release", {"external_id": "first", "hold_id": hold_id})
    else:
        Hold.objects.filter(pk=hold_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    before = snapshot()

    response = post(funded, path, {"external_id": "second", "hold_id": hold_id})

    assert assert_error(response, 422, "hold_not_active") == {"hold_id": hold_id}
    assert snapshot() == before


@pytest.mark.parametrize("path", ["/internal/capture", "/internal/release"])
def test_another_clients_hold_is_404(api_for, path, snapshot):
    owner, other = api_for("shop_service"), api_for("quest_service")
    post(owner, "/internal/credit", {"external_id": "c", "user_id": "alice", "amount": 100})
    hold_id = place_hold(owner, 100)["hold_id"]
    before = snapshot()

    assert_error(post(other, path, {"external_id": "x", "hold_id": hold_id}), 404, "not_found")
    assert_error(post(other, path, {"external_id": "y", "hold_id": str(uuid.uuid4())}), 404, "not_found")

    assert snapshot() == before


# --- authentication and scopes -----------------------------------------------------------------

ENDPOINTS = [
    ("post", "/internal/credit", "points:credit"),
    ("post", "/internal/debit", "points:debit"),
    ("post", "/internal/hold", "points:hold"),
    ("post", "/internal/capture", "points:hold"),
    ("post", "/internal/release", "points:hold"),
    ("get", "/internal/accounts/alice", "points:read"),
    ("get", "/internal/accounts/alice/transactions", "points:read"),
]
VALID_BODY = {"external_id": "e", "user_id": "alice", "amount": 1}


def call(api, method, path):
    return post(api, path, VALID_BODY) if method == "post" else api.get(path)


@pytest.mark.parametrize("method, path, scope", ENDPOINTS)
def test_no_key_is_401(method, path, scope, snapshot):
    before = snapshot()
    response = call(APIClient(), method, path)
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == "Api-Key"
    assert snapshot() == before


@pytest.mark.parametrize(
    "header",
    ["Api-Key not-a-key", "Api-Key ", "Bearer {key}", "Token {key}", "{key}", "Api-Key {key} extra", "Api-Key {key}x"],
)
@pytest.mark.parametrize("method, path, scope", ENDPOINTS)
def test_a_bad_key_or_wrong_keyword_is_401(make_client, method, path, scope, header, snapshot):
    _, key = make_client("svc")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=header.format(key=key))
    before = snapshot()
    assert_error(call(api, method, path), 401, "not_authenticated")
    assert snapshot() == before


def test_the_keyword_is_case_insensitive(make_client):
    _, key = make_client("svc")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"api-key {key}")
    assert api.get("/internal/accounts/alice").status_code == 200


@pytest.mark.parametrize("method, path, scope", ENDPOINTS)
def test_a_revoked_key_or_inactive_client_is_401(make_client, method, path, scope):
    client, key = make_client("svc")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    ServiceClientKey.objects.filter(client=client).update(revoked=True)
    assert_error(call(api, method, path), 401, "not_authenticated")

    _, fresh = ServiceClientKey.objects.create_key(client=client, name="rotated")
    api.credentials(HTTP_AUTHORIZATION=f"Api-Key {fresh}")
    ServiceClient.objects.filter(pk=client.pk).update(is_active=False)
    assert_error(call(api, method, path), 401, "not_authenticated")


def test_an_expired_key_is_401(make_client):
    client, _ = make_client("svc")
    _, key = ServiceClientKey.objects.create_key(
        client=client, name="old", expiry_date=timezone.now() - timedelta(minutes=1)
    )
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    assert_error(api.get("/internal/accounts/alice"), 401, "not_authenticated")


@pytest.mark.parametrize("method, path, scope", ENDPOINTS)
def test_a_key_without_the_endpoints_scope_is_403(api_for, method, path, scope, snapshot):
    api = api_for("svc", [s for s in SCOPES if s != scope] + [f"{scope}:extra"])
    before = snapshot()
    details = assert_error(call(api, method, path), 403, "permission_denied")
    assert details == {}
    assert snapshot() == before


@pytest.mark.parametrize("method, path, scope", ENDPOINTS)
def test_a_key_with_only_the_endpoints_scope_is_let_through(api_for, method, path, scope):
    api = api_for("svc", [scope])
    response = call(api, method, path)
    assert response.status_code not in (401, 403), response.content


# --- validation --------------------------------------------------------------------------------

BAD_OPERATION_FIELDS = [
    ("amount", 0),
    ("amount", -5),
    ("amount", 1.5),
    ("amount", 10.0),
    ("amount", "10"),
    ("amount", True),
    ("amount", None),
    ("amount", 10**12 + 1),
    ("amount", 10**30),
    ("external_id", ""),
    ("external_id", "x" * 201),
    ("external_id", 5),
    ("external_id", None),
    ("user_id", ""),
    ("user_id", "u" * 101),
    ("user_id", 12),
    ("reason", "r" * 201),
    ("reason", 7),
    ("metadata", [1, 2]),
    ("metadata", "text"),
    ("metadata", 3),
    ("metadata", None),
    ("metadata", {"blob": "x" * (16 * 1024)}),
    ("metadata", {"bad": "nul\u0000"}),
    ("user_id", "nul\u0000"),
]


@pytest.mark.parametrize("field, value", BAD_OPERATION_FIELDS)
@pytest.mark.parametrize("path", ["/internal/credit", "/internal/debit", "/internal/hold"])
def test_invalid_fields_are_400_naming_the_field(funded, path, field, value, snapshot):
    before = snapshot()
    body = {"external_id": "op", "user_id": "alice", "amount": 10, field: value}

    details = assert_error(post(funded, path, body), 400, "validation_error")

    assert list(details) == [field]
    assert all(isinstance(message, str) for message in details[field])
    assert snapshot() == before


@pytest.mark.parametrize("missing", ["external_id", "user_id", "amount"])
@pytest.mark.parametrize("path", ["/internal/credit", "/internal/debit", "/internal/hold"])
def test_missing_required_fields_are_400(funded, path, missing, snapshot):
    before = snapshot()
    body = {"external_id": "op", "user_id": "alice", "amount": 10}
    del body[missing]
    assert assert_error(post(funded, path, body), 400, "validation_error") == {missing: ["This field is required."]}
    assert snapshot() == before


def test_the_largest_amount_and_metadata_are_accepted(api):
    metadata = {"blob": "é" * 4000}  # 8 KiB of UTF-8, well inside 16 KiB
    response = post(
        api, "/internal/credit", {"external_id": "big", "user_id": "u", "amount": 10**12, "metadata": metadata}
    )
    assert response.status_code == 201
    assert response.json()["balance"] == 10**12


def test_metadata_size_counts_utf8_bytes(api):
    # 5,000 two-byte characters: 10 KB of UTF-8 (ASCII escapes would make it 30 KB).
    body = {"external_id": "m", "user_id": "u", "amount": 1, "metadata": {"text": "ж" * 5000}}
    assert post(api, "/internal/credit", body).status_code == 201


@pytest.mark.parametrize("value", [0, -1, 1.5, "60", True, 30 * 24 * 3600 + 1])
def test_invalid_expires_in_is_400(funded, value, snapshot):
    before = snapshot()
    body = {"external_id": "h", "user_id": "alice", "amount": 10, "expires_in": value}
    assert list(assert_error(post(funded, "/internal/hold", body), 400, "validation_error")) == ["expires_in"]
    assert snapshot() == before


@pytest.mark.parametrize(
    "body, field",
    [
        ({"external_id": "c"}, "hold_id"),
        ({"hold_id": "00000000-0000-0000-0000-000000000000"}, "external_id"),
        ({"external_id": "c", "hold_id": "nope"}, "hold_id"),
        ({"external_id": "c", "hold_id": 5}, "hold_id"),
        ({"external_id": "c", "hold_id": True}, "hold_id"),
        ({"external_id": "c", "hold_id": "HOLD", "amount": 1}, "hold_id"),
    ],
)
@pytest.mark.parametrize("path", ["/internal/capture", "/internal/release"])
def test_invalid_settlement_requests_are_400(funded, path, body, field, snapshot):
    before = snapshot()
    assert field in assert_error(post(funded, path, body), 400, "validation_error")
    assert snapshot() == before


@pytest.mark.parametrize("amount", [0, -1, 2.5, "5", True, 10**12 + 1])
def test_invalid_capture_amount_is_400(funded, amount, snapshot):
    hold_id = place_hold(funded, 100)["hold_id"]
    before = snapshot()
    body = {"external_id": "c", "hold_id": hold_id, "amount": amount}
    assert list(assert_error(post(funded, "/internal/capture", body), 400, "validation_error")) == ["amount"]
    assert snapshot() == before


@pytest.mark.parametrize(
    "raw",
    ["{", '{"amount": 1,}', "NaN", b"\xff\xfe{}", "{'a': 1}", '{"amount": 1' + "0" * 5000 + "}"],
    ids=["unclosed", "trailing-comma", "nan", "not-utf8", "single-quotes", "5000-digit-number"],
)
def test_malformed_json_is_400(api, raw, snapshot):
    before = snapshot()
    details = assert_error(raw_post(api, "/internal/credit", raw), 400, "validation_error")
    assert list(details) == ["body"]
    assert snapshot() == before


@pytest.mark.parametrize("path", ["/internal/credit", "/internal/capture", "/api/v1/events"])
@pytest.mark.parametrize("raw", ["[" * 50_000, '{"a":' * 5_000 + "1" + "}" * 5_000], ids=["arrays", "objects"])
def test_a_too_deeply_nested_body_is_400_not_a_server_error(api, path, raw, snapshot):
    before = snapshot()
    details = assert_error(raw_post(api, path, raw), 400, "validation_error")
    assert details == {"body": ["JSON nested deeper than 32 levels."]}
    assert snapshot() == before


@pytest.mark.parametrize("raw", ['[{"external_id": "e", "user_id": "u", "amount": 1}]', "[]", '"text"', "5", "null"])
def test_a_body_that_is_not_an_object_is_400(api, raw, snapshot):
    before = snapshot()
    assert list(assert_error(raw_post(api, "/internal/credit", raw), 400, "validation_error")) == ["non_field_errors"]
    assert snapshot() == before


def test_a_form_encoded_body_is_415(api):
    response = api.post("/internal/credit", {"external_id": "e", "user_id": "u", "amount": "1"})
    assert_error(response, 415, "unsupported_media_type")


def test_a_too_large_body_is_413(api, snapshot):
    before = snapshot()
    body = json.dumps({"external_id": "e", "user_id": "u", "amount": 1, "metadata": {"x": "a" * 300_000}})
    details = assert_error(raw_post(api, "/internal/credit", body), 413, "request_too_large")
    assert details == {"max_bytes": 256 * 1024}
    assert snapshot() == before


def test_a_user_id_in_the_path_that_cannot_exist_is_400(api):
    assert list(assert_error(api.get("/internal/accounts/a%00b"), 400, "validation_error")) == ["user_id"]
    assert list(assert_error(api.get("/internal/accounts/a%00b/transactions"), 400, "validation_error")) == ["user_id"]


# --- routing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/internal/nope", "/internal/", "/internal", "/internal/credit/extra", "/api/v1/nope", "/api/nope",
     f"/internal/accounts/{'u' * 101}"],
)  # fmt: skip
@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_unknown_paths_under_the_api_are_json_404(api, path, method):
    assert_error(getattr(api, method)(path), 404, "not_found")


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/internal/credit"), ("put", "/internal/debit"), ("delete", "/internal/hold"),
        ("patch", "/internal/capture"), ("get", "/internal/release"), ("post", "/internal/accounts/alice"),
        ("delete", "/internal/accounts/alice/transactions"),
        ("put", "/api/v1/events"), ("delete", "/api/v1/reward-actions"),
    ],
)  # fmt: skip
def test_a_wrong_method_is_json_405(api, method, path):
    assert_error(getattr(api, method)(path), 405, "method_not_allowed")


def test_trailing_slashes_are_accepted(api):
    assert post(api, "/internal/credit/", {"external_id": "e", "user_id": "alice", "amount": 3}).status_code == 201
    assert api.get("/internal/accounts/alice/").json()["balance"] == 3


def test_a_content_length_that_is_not_a_number_is_400(api, snapshot):
    before = snapshot()
    response = api.generic(
        "POST", "/internal/credit", json.dumps(VALID_BODY), content_type="application/json", CONTENT_LENGTH="many"
    )
    assert_error(response, 400, "validation_error")
    assert snapshot() == before


def test_each_client_is_throttled_on_its_own_with_retry_after(api_for, monkeypatch):
    from config.api.throttling import ServiceClientRateThrottle

    monkeypatch.setattr(ServiceClientRateThrottle, "THROTTLE_RATES", {"service_client": "3/min"})
    busy, quiet = api_for("busy_service"), api_for("quiet_service")
    for _ in range(3):
        assert busy.get("/internal/accounts/alice").status_code == 200

    throttled = busy.get("/internal/accounts/alice")

    assert_error(throttled, 429, "throttled")
    assert int(throttled["Retry-After"]) > 0
    assert quiet.get("/internal/accounts/alice").status_code == 200
