"""The single error body of the API (SPEC §4) and the mapping of every failure onto it.

Body: {"error": {"code": "<snake_case>", "message": "<human text>", "details": {...}}}.
Nothing from an unexpected exception (trace, SQL) ever reaches a caller: it is logged instead.
"""

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response

logger = logging.getLogger("api.errors")


class DomainError(Exception):
    """A business refusal raised by a service; the API renders it with its own status and code."""

    status_code = 422
    code = "domain_error"
    default_message = "The operation was refused."

    def __init__(self, message: str | None = None, *, details: dict | None = None):
        self.message = message or self.default_message
        self.details = details or {}
        super().__init__(self.message)


class IdempotencyConflict(DomainError):
    status_code = 409
    code = "idempotency_conflict"
    default_message = "This external_id was already used with a different payload."


class NotFound(DomainError):
    status_code = 404
    code = "not_found"
    default_message = "Not found."


def error_body(code: str, message: str, details: dict | None = None) -> dict:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def json_error(status: int, code: str, message: str, details: dict | None = None) -> JsonResponse:
    return JsonResponse(error_body(code, message, details), status=status)


def _validation_details(detail) -> dict:
    if isinstance(detail, dict):
        return {key: _as_messages(value) for key, value in detail.items()}
    return {"non_field_errors": _as_messages(detail)}


def _as_messages(value):
    if isinstance(value, dict):
        return {key: _as_messages(item) for key, item in value.items()}
    if isinstance(value, list):
        if all(not isinstance(item, (dict, list)) for item in value):
            return [str(item) for item in value]
        return [_as_messages(item) for item in value]
    return [str(value)]


_DRF_CODES = {
    drf.NotAuthenticated: (401, "not_authenticated"),
    drf.AuthenticationFailed: (401, "not_authenticated"),
    drf.PermissionDenied: (403, "permission_denied"),
    drf.NotFound: (404, "not_found"),
    drf.MethodNotAllowed: (405, "method_not_allowed"),
    drf.NotAcceptable: (406, "not_acceptable"),
    drf.UnsupportedMediaType: (415, "unsupported_media_type"),
    drf.Throttled: (429, "throttled"),
}


def api_exception_handler(exc, context):
    headers = {}
    if isinstance(exc, DomainError):
        return Response(error_body(exc.code, exc.message, exc.details), status=exc.status_code)
    if isinstance(exc, Http404):
        exc = drf.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf.PermissionDenied()

    if isinstance(exc, drf.ValidationError):
        return Response(
            error_body("validation_error", "The request is invalid.", _validation_details(exc.detail)),
            status=400,
        )
    if isinstance(exc, drf.ParseError):
        return Response(
            error_body("validation_error", "The request body is not valid JSON.", {"body": [str(exc.detail)]}),
            status=400,
        )
    if isinstance(exc, drf.APIException):
        status, code = next(
            (mapped for cls, mapped in _DRF_CODES.items() if isinstance(exc, cls)),
            (exc.status_code, str(exc.default_code)),
        )
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None) is not None:
            headers["Retry-After"] = str(int(exc.wait) + 1)
        return Response(error_body(code, _message(exc.detail)), status=status, headers=headers)

    logger.exception("unhandled API error", extra={"path": getattr(context.get("request"), "path", "")})
    return Response(error_body("internal_error", "An internal error occurred."), status=500)


def _message(detail) -> str:
    if isinstance(detail, (list, tuple)) and detail:
        return str(detail[0])
    if isinstance(detail, dict) and detail:
        return str(next(iter(detail.values())))
    return str(detail)
