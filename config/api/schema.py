"""The OpenAPI description of what the API actually does, beyond what the views declare one by one.

- the service-client authentication (``Authorization: Api-Key <key>``);
- the SPEC §4 error bodies, one component per error code, so each response states which codes it has;
- ``error_responses()``: the error responses of an operation, for its ``extend_schema``;
- ``finalize_schema``: a post-processing hook that makes response bodies exact (every field present,
  no undocumented field), documents the headers every response carries (``X-Request-ID``,
  ``Retry-After`` on 429, ``WWW-Authenticate`` on 401), spells the paths as the SPEC does (no
  trailing slash; both forms are served) and links each operation to the ones that use its result.
"""

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "points.auth.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": (
                "Send `Authorization: Api-Key <key>`; keys are issued per service client with scopes. "
                "No or a bad key is a 401, a key without the operation's scope a 403."
            ),
        }


# --- error bodies (SPEC §4) -------------------------------------------------------------------

_EMPTY = {"type": "object", "additionalProperties": False}
_INTEGER = {"type": "integer"}
_TEXT = {"type": "string"}

# code -> (component name, schema of ``details``)
ERROR_CODES: dict[str, tuple[str, dict]] = {
    "validation_error": (
        "ValidationError",
        {
            "type": "object",
            "description": "Field name (or `non_field_errors`, `body`) to its messages.",
            "additionalProperties": {"type": "array", "items": _TEXT},
        },
    ),
    "not_authenticated": ("NotAuthenticatedError", _EMPTY),
    "permission_denied": ("PermissionDeniedError", _EMPTY),
    "not_found": (
        "NotFoundError",
        {"type": "object", "properties": {"hold_id": _TEXT, "transaction_id": _TEXT}, "additionalProperties": False},
    ),
    "not_acceptable": ("NotAcceptableError", _EMPTY),
    "idempotency_conflict": (
        "IdempotencyConflictError",
        {
            "type": "object",
            "properties": {"external_id": _TEXT},
            "required": ["external_id"],
            "additionalProperties": False,
        },
    ),
    "request_too_large": (
        "RequestTooLargeError",
        {
            "type": "object",
            "properties": {"max_bytes": _INTEGER},
            "required": ["max_bytes"],
            "additionalProperties": False,
        },
    ),
    "unsupported_media_type": ("UnsupportedMediaTypeError", _EMPTY),
    "insufficient_funds": (
        "InsufficientFundsError",
        {
            "type": "object",
            "properties": {"available": _INTEGER, "requested": _INTEGER},
            "required": ["available", "requested"],
            "additionalProperties": False,
        },
    ),
    "hold_not_active": (
        "HoldNotActiveError",
        {"type": "object", "properties": {"hold_id": _TEXT}, "required": ["hold_id"], "additionalProperties": False},
    ),
    "capture_exceeds_hold": (
        "CaptureExceedsHoldError",
        {
            "type": "object",
            "properties": {"held": _INTEGER, "requested": _INTEGER},
            "required": ["held", "requested"],
            "additionalProperties": False,
        },
    ),
    "reversal_exceeds_original": (
        "ReversalExceedsOriginalError",
        {
            "type": "object",
            "properties": {"transaction_id": _TEXT, "original": _INTEGER, "reversed": _INTEGER, "requested": _INTEGER},
            "required": ["transaction_id", "original", "reversed", "requested"],
            "additionalProperties": False,
        },
    ),
    "expiry_in_past": (
        "ExpiryInPastError",
        {
            "type": "object",
            "properties": {"expires_at": _TEXT},
            "required": ["expires_at"],
            "additionalProperties": False,
        },
    ),
    "not_reversible": (
        "NotReversibleError",
        {
            # A ledger transaction of a kind that is not reversed, or an event that is itself a reversal.
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"transaction_id": _TEXT, "kind": _TEXT},
                    "required": ["transaction_id", "kind"],
                    "additionalProperties": False,
                },
                {
                    "type": "object",
                    "properties": {"reverses_external_id": _TEXT},
                    "required": ["reverses_external_id"],
                    "additionalProperties": False,
                },
            ]
        },
    ),
    "original_event_not_found": (
        "OriginalEventNotFoundError",
        {
            "type": "object",
            "properties": {"reverses_external_id": _TEXT},
            "required": ["reverses_external_id"],
            "additionalProperties": False,
        },
    ),
    "batch_operation_refused": (
        "BatchOperationRefusedError",
        {
            "type": "object",
            "description": "The first refused operation of an atomic batch: its index, the status it alone would "
            "answer and its error.",
            "properties": {
                "index": _INTEGER,
                "status": _INTEGER,
                "error": {
                    "type": "object",
                    "properties": {"code": _TEXT, "message": _TEXT, "details": {"type": "object"}},
                    "required": ["code", "message", "details"],
                },
            },
            "required": ["index", "status", "error"],
            "additionalProperties": False,
        },
    ),
    "throttled": ("ThrottledError", _EMPTY),
}

# status -> (codes, description); 422 is per operation (its business refusals).
_STATUS_ERRORS: dict[int, tuple[tuple[str, ...], str]] = {
    400: (("validation_error",), "Invalid input (`validation_error`, details name the fields); nothing changed."),
    401: (("not_authenticated",), "No, a malformed, unknown, revoked or expired API key (`not_authenticated`)."),
    403: (("permission_denied",), "The key lacks the operation's scope (`permission_denied`)."),
    404: (("not_found",), "Not found (`not_found`)."),
    406: (("not_acceptable",), "The `Accept` header excludes `application/json` (`not_acceptable`)."),
    409: (
        ("idempotency_conflict",),
        "The external_id was used before with a different payload (`idempotency_conflict`).",
    ),
    413: (("request_too_large",), "The request body is larger than API_MAX_BODY_BYTES (`request_too_large`)."),
    415: (("unsupported_media_type",), "The body is not `application/json` (`unsupported_media_type`)."),
    429: (("throttled",), "Too many requests from this client (`throttled`); retry after `Retry-After` seconds."),
}

# Every operation can answer these: a bad key, a missing scope, an unreadable Content-Length or
# a too-large body are refused before the view runs, whatever the method.
COMMON_ERRORS = (400, 401, 403, 406, 413, 429)
WRITE_ERRORS = (*COMMON_ERRORS, 409, 415)


def _ref(code: str) -> dict:
    return {"$ref": f"#/components/schemas/{ERROR_CODES[code][0]}"}


def _error_schema(codes: tuple[str, ...]) -> dict:
    return _ref(codes[0]) if len(codes) == 1 else {"oneOf": [_ref(code) for code in codes]}


def error_responses(*statuses: int, refusals: tuple[str, ...] = (), not_found: str | None = None) -> dict:
    """The error responses of an operation: the given statuses, and 422 with its refusal codes."""
    responses = {}
    for status in statuses:
        codes, description = _STATUS_ERRORS[status]
        if status == 404 and not_found:
            description = not_found
        responses[status] = OpenApiResponse(_error_schema(codes), description=description)
    if refusals:
        listed = ", ".join(f"`{code}`" for code in refusals)
        responses[422] = OpenApiResponse(_error_schema(refusals), description=f"Refused ({listed}); nothing changed.")
    return responses


def _error_component(code: str, details: dict) -> dict:
    return {
        "type": "object",
        "description": f"SPEC §4 error body with code `{code}`.",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "string", "enum": [code]},
                    "message": {"type": "string", "minLength": 1},
                    "details": details,
                },
                "required": ["code", "message", "details"],
                "additionalProperties": False,
            }
        },
        "required": ["error"],
        "additionalProperties": False,
    }


# --- post-processing -------------------------------------------------------------------------

_REQUEST_ID_HEADER = {
    "description": "The request's id (the caller's `X-Request-ID` if it sent one), also in the server's log line.",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 64},
}
_RETRY_AFTER_HEADER = {
    "description": "Seconds to wait before the client's next request is accepted.",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}
_AUTHENTICATE_HEADER = {
    "description": "The authentication scheme: `Api-Key`.",
    "required": True,
    "schema": {"type": "string", "enum": ["Api-Key"]},
}

# operationId of a source -> {status: {link name: link}}; checked against the schema when it is built.
_BODY = "$response.body#"
_LINKS: dict[str, dict[str, dict[str, dict]]] = {}


def _link(operation_id: str, description: str, parameters: dict | None = None, body: dict | None = None) -> dict:
    link = {"operationId": operation_id, "description": description}
    if parameters:
        link["parameters"] = parameters
    if body:
        link["requestBody"] = body
    return link


def _ledger_links(kind: str) -> dict:
    account = {"user_id": f"{_BODY}/user_id"}
    links = {
        "GetAccount": _link("internal_accounts_retrieve", "The balance of the user.", account),
        "ListTransactions": _link("internal_accounts_transactions_list", "The user's history.", account),
    }
    if kind == "credit":
        user = {"user_id": f"{_BODY}/user_id"}
        links["DebitPoints"] = _link("internal_debit_create", "Spend some of the user's points.", body=user)
        links["HoldPoints"] = _link("internal_hold_create", "Hold some of the user's points.", body=user)
    if kind == "hold":
        hold = {"hold_id": f"{_BODY}/hold_id"}
        links["CaptureHold"] = _link("internal_capture_create", "Capture this hold.", body=hold)
        links["ReleaseHold"] = _link("internal_release_create", "Release this hold.", body=hold)
    return links


def _links() -> dict[str, dict[str, dict]]:
    if not _LINKS:
        for operation_id, kind in (
            ("internal_credit_create", "credit"),
            ("internal_debit_create", "debit"),
            ("internal_hold_create", "hold"),
            ("internal_capture_create", "capture"),
            ("internal_release_create", "release"),
        ):
            _LINKS[operation_id] = {"201": _ledger_links(kind), "200": _ledger_links(kind)}
        event = {
            "GetEvent": _link("api_v1_events_retrieve", "The stored event.", {"event_id": f"{_BODY}/id"}),
            "ListEventActions": _link(
                "api_v1_reward_actions_list", "The event's reward actions.", {"event_id": f"{_BODY}/id"}
            ),
            "GetFirstAction": _link(
                "api_v1_reward_actions_retrieve",
                "The event's first reward action (none when the event made none).",
                {"action_id": f"{_BODY}/reward_actions/0/id"},
            ),
        }
        _LINKS["api_v1_events_create"] = {"201": event, "200": event}
        _LINKS["api_v1_reward_actions_retrieve"] = {
            "200": {
                "GetActionEvent": _link(
                    "api_v1_events_retrieve", "The event that made this action.", {"event_id": f"{_BODY}/event_id"}
                )
            }
        }
    return _LINKS


def _strip_trailing_slash(path: str) -> str:
    return path.rstrip("/") if path != "/" else path


def finalize_schema(result, generator, request, public):
    """drf-spectacular post-processing hook (see the module docstring)."""
    components = result.setdefault("components", {}).setdefault("schemas", {})
    for code, (name, details) in ERROR_CODES.items():
        components[name] = _error_component(code, details)

    # Response bodies: every declared field is always present and nothing else is. Request
    # components (suffix "Request") stay open: unknown input fields are ignored, as documented.
    for name, component in components.items():
        if name.endswith("Request") or component.get("type") != "object" or "properties" not in component:
            continue
        component["required"] = sorted(component["properties"])
        component["additionalProperties"] = False

    result["paths"] = {_strip_trailing_slash(path): item for path, item in result.get("paths", {}).items()}
    operation_ids = {operation.get("operationId") for item in result["paths"].values() for operation in item.values()}
    links = _links()
    for item in result["paths"].values():
        for operation in item.values():
            for status, response in operation.get("responses", {}).items():
                headers = response.setdefault("headers", {})
                headers["X-Request-ID"] = _REQUEST_ID_HEADER
                if status == "429":
                    headers["Retry-After"] = _RETRY_AFTER_HEADER
                if status == "401":
                    headers["WWW-Authenticate"] = _AUTHENTICATE_HEADER
                response_links = links.get(operation.get("operationId"), {}).get(status)
                if response_links:
                    unknown = {link["operationId"] for link in response_links.values()} - operation_ids
                    assert not unknown, f"links to unknown operations: {unknown}"
                    response["links"] = response_links
    result.setdefault("info", {})["description"] = (
        f"{result['info'].get('description', '')}\n\nLimits: request bodies up to API_MAX_BODY_BYTES "
        f"({settings.API_MAX_BODY_BYTES} bytes), pages up to API_MAX_PAGE_SIZE ({settings.API_MAX_PAGE_SIZE}) "
        f"items, API_THROTTLE_RATE ({settings.API_THROTTLE_RATE}) requests per client. Every path is also "
        "served with a trailing slash."
    ).strip()
    return result
