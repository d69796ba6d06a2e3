"""Ledger bodies and requests that must be a JSON 400, never a 500 nor Django's HTML (SPEC §4, §9)."""

import json

import pytest

from .conftest import ledger_snapshot

pytestmark = pytest.mark.django_db

CREDIT = {"external_id": "c-1", "user_id": "alice", "amount": 5}


def raw(api, path: str, text: str):
    return api.generic("POST", path, text.encode("utf-8", "surrogatepass"), content_type="application/json")


def error(response, status: int, code: str = "validation_error") -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    return body["error"]["details"]


def metadata_text(depth: int) -> str:
    return '{"a": ' * (depth - 1) + "{}" + "}" * (depth - 1)


@pytest.mark.parametrize("path", ["/internal/credit", "/internal/debit", "/internal/hold"])
@pytest.mark.parametrize("depth", [32, 880, 918])
def test_metadata_nested_deeper_than_32_levels_is_400(api, path, depth):
    before = ledger_snapshot()
    text = json.dumps(CREDIT)[:-1] + f', "metadata": {metadata_text(depth)}}}'
    details = error(raw(api, path, text), 400)
    assert details == {"body": ["JSON nested deeper than 32 levels."]}
    assert ledger_snapshot() == before


def test_metadata_within_the_limit_is_stored(api):
    text = json.dumps(CREDIT)[:-1] + f', "metadata": {metadata_text(31)}}}'
    assert raw(api, "/internal/credit", text).status_code == 201


def test_a_duplicate_amount_is_400_not_the_last_one(api):
    before = ledger_snapshot()
    details = error(
        raw(api, "/internal/credit", '{"external_id": "c-1", "user_id": "alice", "amount": 1, "amount": 7}'), 400
    )
    assert details == {"body": ["Duplicate key 'amount' in a JSON object."]}
    assert ledger_snapshot() == before


@pytest.mark.parametrize("text", ['"\\u0000"', '"\\ud800"'], ids=["nul", "lone-surrogate"])
@pytest.mark.parametrize("field", ["user_id", "reason", "external_id", "metadata"])
def test_nul_and_lone_surrogates_are_400(api, field, text):
    before = ledger_snapshot()
    body = json.dumps({**CREDIT, field: {"k": "X"} if field == "metadata" else "X"}).replace('"X"', text)
    assert list(error(raw(api, "/internal/credit", body), 400)) == [field]
    assert ledger_snapshot() == before


@pytest.mark.parametrize("user_id", ["a/b", "tab\tid", "end\n", " alice", "alice ", "\x1b[31m", "x" * 101])
@pytest.mark.parametrize("path", ["/internal/credit", "/internal/hold"])
def test_invalid_user_ids_are_400(api, path, user_id):
    before = ledger_snapshot()
    assert list(error(api.post(path, {**CREDIT, "user_id": user_id}, format="json"), 400)) == ["user_id"]
    assert ledger_snapshot() == before


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize(
    "method, path", [("get", "/api/v1/events/x"), ("post", "/internal/credit"), ("get", "/internal/accounts/a")]
)
def test_a_bad_host_header_is_a_json_400(api, settings, debug, method, path):
    settings.DEBUG = debug
    before = ledger_snapshot()
    response = getattr(api, method)(path, CREDIT, format="json", HTTP_HOST="attacker.example")
    assert error(response, 400) == {"host": ["Not in ALLOWED_HOSTS."]}
    assert ledger_snapshot() == before


def test_unknown_paths_and_methods_answer_the_json_body(api):
    error(api.get("/internal/nothing-here"), 404, "not_found")
    error(api.get("/api/v2/events"), 404, "not_found")
    error(api.delete("/internal/credit"), 405, "method_not_allowed")
    error(api.put("/api/v1/events", {}, format="json"), 405, "method_not_allowed")
