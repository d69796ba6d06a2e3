"""What the OpenAPI document at /api/schema states, read as a client would read it."""

import json

import pytest

from .conftest import OPERATION_SCOPES

pytestmark = pytest.mark.django_db


@pytest.fixture
def document(client) -> dict:
    response = client.get("/api/schema?format=json")
    assert response.status_code == 200
    return json.loads(response.content)


def operations(document):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", operation


def resolve(document, schema: dict) -> dict:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_every_operation_is_documented_under_the_paths_of_the_spec(document):
    assert {label for label, _ in operations(document)} == set(OPERATION_SCOPES)


def test_every_operation_requires_the_api_key_scheme(document):
    scheme = document["components"]["securitySchemes"]["ApiKey"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "Authorization")
    assert "Api-Key <key>" in scheme["description"]
    for label, operation in operations(document):
        assert operation["security"] == [{"ApiKey": []}], label


def test_every_operation_documents_the_errors_any_request_can_meet(document):
    for label, operation in operations(document):
        statuses = set(operation["responses"])
        assert {"200", "400", "401", "403", "406", "413", "429"} <= statuses, label
        if label == "POST /internal/batch":
            # It answers 200 with each operation's own status (a 201 or a 409 is an item's, not the batch's).
            assert {"415", "422"} <= statuses and not {"201", "409"} & statuses, label
        elif label.startswith("POST"):
            assert {"201", "409", "415"} <= statuses, label
        if "{" in label or "cursor" in {p["name"] for p in operation.get("parameters", [])}:
            assert "404" in statuses, label


@pytest.mark.parametrize(
    "label, status, codes",
    [
        ("POST /internal/debit", "422", ["insufficient_funds"]),
        ("POST /internal/hold", "422", ["insufficient_funds"]),
        ("POST /internal/capture", "422", ["hold_not_active", "capture_exceeds_hold"]),
        ("POST /internal/release", "422", ["hold_not_active"]),
        ("POST /internal/credit", "409", ["idempotency_conflict"]),
        ("POST /api/v1/events", "413", ["request_too_large"]),
        ("GET /api/v1/reward-actions", "429", ["throttled"]),
        ("GET /internal/accounts/{user_id}", "401", ["not_authenticated"]),
        ("GET /api/v1/events/{event_id}", "403", ["permission_denied"]),
        ("POST /internal/credit", "400", ["validation_error"]),
    ],
)
def test_error_responses_are_the_spec_error_body_with_their_codes(document, label, status, codes):
    operation = dict(operations(document))[label]
    schema = operation["responses"][status]["content"]["application/json"]["schema"]
    variants = [resolve(document, s) for s in schema.get("oneOf", [schema])]
    assert [variant["properties"]["error"]["properties"]["code"]["enum"] for variant in variants] == [
        [code] for code in codes
    ]
    for variant in variants:
        assert variant["required"] == ["error"] and variant["additionalProperties"] is False
        assert variant["properties"]["error"]["required"] == ["code", "message", "details"]


def test_throttled_and_unauthenticated_responses_document_their_headers(document):
    for label, operation in operations(document):
        responses = operation["responses"]
        assert responses["429"]["headers"]["Retry-After"]["required"] is True, label
        assert responses["401"]["headers"]["WWW-Authenticate"]["schema"]["enum"] == ["Api-Key"], label
        for status, response in responses.items():
            assert response["headers"]["X-Request-ID"]["required"] is True, (label, status)


@pytest.mark.parametrize(
    "label, item",
    [
        ("GET /api/v1/reward-actions", "RewardActionOut"),
        ("GET /internal/accounts/{user_id}/transactions", "HistoryItemOut"),
    ],
)
def test_both_lists_are_cursor_paginated_bodies(document, label, item):
    operation = dict(operations(document))[label]
    body = resolve(document, operation["responses"]["200"]["content"]["application/json"]["schema"])
    assert body["required"] == ["next", "previous", "results"]
    assert body["additionalProperties"] is False
    assert body["properties"]["results"] == {"type": "array", "items": {"$ref": f"#/components/schemas/{item}"}}
    for link in ("next", "previous"):
        assert body["properties"][link]["nullable"] is True and body["properties"][link]["format"] == "uri"
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert parameters["cursor"]["schema"] == {"type": "string"}
    assert parameters["page_size"]["schema"] == {"type": "integer", "minimum": 1}
    assert "capped" in parameters["page_size"]["description"]


def test_the_reward_action_list_documents_its_filters(document):
    parameters = {p["name"]: p for p in dict(operations(document))["GET /api/v1/reward-actions"]["parameters"]}
    assert set(parameters) == {
        "target_user_id", "status", "reward_type", "event_id", "reverses", "cursor", "page_size",
    }  # fmt: skip
    assert parameters["reverses"]["schema"]["format"] == "uuid"
    assert parameters["event_id"]["schema"]["format"] == "uuid"
    assert parameters["status"]["schema"]["enum"] == [
        "locked",
        "pending",
        "dispatched",
        "completed",
        "failed",
        "cancelled",
    ]
    assert parameters["reward_type"]["schema"]["enum"] == ["points", "nft", "g2a_offchain"]
    assert parameters["target_user_id"]["schema"]["maxLength"] == 100


def test_path_parameters_are_documented(document):
    by_label = dict(operations(document))
    for label, name, expected in [
        ("GET /api/v1/events/{event_id}", "event_id", {"type": "string", "format": "uuid"}),
        ("GET /api/v1/reward-actions/{action_id}", "action_id", {"type": "string", "format": "uuid"}),
        (
            "GET /internal/accounts/{user_id}",
            "user_id",
            {"type": "string", "minLength": 1, "maxLength": 100, "pattern": "^[^/]+$"},
        ),
    ]:
        (parameter,) = [p for p in by_label[label]["parameters"] if p["in"] == "path"]
        assert (parameter["name"], parameter["required"], parameter["schema"]) == (name, True, expected)


def test_response_bodies_are_exact(document):
    """Every field of a response body is always present, and nothing undocumented is added."""
    for name, component in document["components"]["schemas"].items():
        if name.endswith("Request") or component.get("type") != "object":
            continue
        assert component["additionalProperties"] is False, name
        assert set(component["required"]) == set(component["properties"]), name


def test_request_bodies_state_their_rules(document):
    schemas = document["components"]["schemas"]
    event = schemas["EventInRequest"]["properties"]
    assert event["event_type"]["pattern"] == r"^[a-z0-9_]+(\.[a-z0-9_]+)+$"
    assert event["context"]["type"] == "object"
    assert schemas["CreditInRequest"]["properties"]["metadata"]["type"] == "object"
    assert schemas["CreditInRequest"]["properties"]["amount"] == {
        "type": "integer",
        "maximum": 10**12,
        "minimum": 1,
        "format": "int64",
        "description": "Points, a JSON integer.",
    }


def test_links_connect_results_to_the_operations_that_use_them(document):
    hold = dict(operations(document))["POST /internal/hold"]["responses"]["201"]["links"]
    assert hold["CaptureHold"] == {
        "operationId": "internal_capture_create",
        "description": "Capture this hold.",
        "requestBody": {"hold_id": "$response.body#/hold_id"},
    }
    event = dict(operations(document))["POST /api/v1/events"]["responses"]["201"]["links"]
    assert event["GetEvent"]["parameters"] == {"event_id": "$response.body#/id"}
