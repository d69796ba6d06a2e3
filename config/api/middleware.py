import logging
import time
import uuid

from django.conf import settings
from django.core.exceptions import DisallowedHost

from config.logging import current_request_id

from .errors import json_error

# A caller's X-Request-ID is kept when it is a plain token (it is echoed in a header and logged).
_REQUEST_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")

API_PREFIXES = ("/api/", "/internal/")
request_logger = logging.getLogger("api.request")


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES) or path in ("/api", "/internal")


class ApiHostMiddleware:
    """A Host header this service does not serve is a JSON 400 under the API paths.

    Django raises DisallowedHost from the first ``request.get_host()``; with DEBUG on its answer is the
    HTML debug page whatever handler400 says. Checked here first, an API caller always gets §4's body.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if is_api_path(request.path):
            try:
                request.get_host()
            except DisallowedHost:
                return json_error(
                    400, "validation_error", "The Host header names a host this service does not serve.",
                    {"host": ["Not in ALLOWED_HOSTS."]},
                )  # fmt: skip
        return self.get_response(request)


class ApiBodyLimitMiddleware:
    """Refuses API bodies above API_MAX_BODY_BYTES with 413 before anything reads them."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if is_api_path(request.path):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return json_error(400, "validation_error", "Content-Length is not a number.")
            if length > settings.API_MAX_BODY_BYTES:
                return json_error(
                    413,
                    "request_too_large",
                    f"The request body exceeds {settings.API_MAX_BODY_BYTES} bytes.",
                    {"max_bytes": settings.API_MAX_BODY_BYTES},
                )
        return self.get_response(request)


class RequestLogMiddleware:
    """One structured log line per request, with an id that is also returned as X-Request-ID."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.request_id = _request_id(request.META.get("HTTP_X_REQUEST_ID"))
        started = time.perf_counter()
        token = current_request_id.set(request.request_id)
        try:
            response = self.get_response(request)
        finally:
            current_request_id.reset(token)
        response["X-Request-ID"] = request.request_id
        user = getattr(request, "user", None)
        request_logger.info(
            "request",
            extra={
                "request_id": request.request_id,
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "client": getattr(user, "client_name", None),
            },
        )
        return response


def _request_id(given: str | None) -> str:
    if given and len(given) <= 64 and set(given) <= _REQUEST_ID_CHARS:
        return given
    return uuid.uuid4().hex
