"""One JSON object per log line, so logs can be searched and correlated by id.

Every line written while a request is being served carries that request's ``request_id`` (also
returned as ``X-Request-ID``), whichever logger wrote it. Fields that could carry secrets or
personal data (API keys, the Authorization header, event context, ledger metadata, request
bodies) are never written, even if a caller passes them as ``extra``.
"""

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

# Set by the request middleware for the duration of one request.
current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)

REDACTED = "[redacted]"
SENSITIVE_FIELDS = frozenset(
    {
        "authorization",
        "api_key",
        "key",
        "token",
        "password",
        "headers",
        "body",
        "data",
        "context",
        "metadata",
        "params",
    }
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = REDACTED if key.lower() in SENSITIVE_FIELDS else value
        request_id = current_request_id.get()
        if request_id and "request_id" not in payload:
            payload["request_id"] = request_id
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)
