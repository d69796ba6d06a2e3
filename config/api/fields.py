import json
import uuid

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .jsonbody import json_depth_problem, storable_text_problem

USER_ID_MAX_LENGTH = 100


def user_id_problem(value) -> str | None:
    """Why ``value`` cannot be a user id (SPEC §5), or None.

    A user id is 1..100 characters, storable, with no ``/`` (it is a path segment of the account
    URLs), no control character and no leading or trailing whitespace (forms and URLs would alter it).
    """
    if not isinstance(value, str):
        return "A user id must be a string."
    if not 1 <= len(value) <= USER_ID_MAX_LENGTH:
        return f"A user id has 1 to {USER_ID_MAX_LENGTH} characters."
    problem = storable_text_problem(value)
    if problem:
        return problem
    if "/" in value:
        return "A user id may not contain '/'."
    if any(ord(char) < 32 or 127 <= ord(char) < 160 for char in value):
        return "A user id may not contain control characters."
    # str.strip() and the schema pattern's \s agree but for U+FEFF, which ECMA-262 counts as space.
    if value != value.strip() or value.startswith("\ufeff") or value.endswith("\ufeff"):
        return "A user id may not begin or end with whitespace."
    return None


def canonical_uuid(value) -> str | None:
    """A UUID (object, or text in any form a database returns) as lowercase hyphenated 8-4-4-4-12."""
    if value is None:
        return None
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(uuid.UUID(str(value)))


class StrictIntegerField(serializers.IntegerField):
    """An integer that arrived as a JSON integer: "10", 10.0, 10.5 and true are refused."""

    default_error_messages = {"invalid": "A JSON integer is required."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    """A string that arrived as a JSON string (numbers are not silently turned into text)."""

    default_error_messages = {"invalid": "A string is required."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


# The schema's pattern (ECMA-262 as JSON Schema reads it; lone surrogates, which no regex engine of
# a JSON Schema validator can name, are refused as for every string, SPEC §4).
_USER_ID_CHAR = r"[^/\x00-\x1f\x7f-\x9f]"
_USER_ID_EDGE = r"[^/\s\x00-\x1f\x7f-\x9f]"
USER_ID_PATTERN = rf"^{_USER_ID_EDGE}({_USER_ID_CHAR}*{_USER_ID_EDGE})?$"


@extend_schema_field(
    {
        "type": "string",
        "minLength": 1,
        "maxLength": USER_ID_MAX_LENGTH,
        "pattern": USER_ID_PATTERN,
        "description": "A user id: no '/', no control character, no leading or trailing whitespace.",
    }
)
class UserIdField(serializers.CharField):
    """A user id as SPEC §5 defines it, taken exactly as sent (never trimmed)."""

    default_error_messages = {"invalid": "A string is required.", "user_id": "{problem}"}

    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", USER_ID_MAX_LENGTH)
        kwargs.setdefault("min_length", 1)
        kwargs["trim_whitespace"] = False
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        problem = user_id_problem(data)
        if problem:
            self.fail("user_id", problem=problem)
        return super().to_internal_value(data)


class StrictUUIDField(serializers.UUIDField):
    """A UUID that arrived as a JSON string (DRF would also take an integer, or ``true`` as UUID 1)."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid", value=data)
        return super().to_internal_value(data)


@extend_schema_field({"type": "object", "additionalProperties": {}})
class BoundedJSONObjectField(serializers.JSONField):
    """A JSON object whose serialized form (UTF-8) stays within ``max_bytes`` and that PostgreSQL can store."""

    default_error_messages = {
        "not_object": "A JSON object is required.",
        "too_large": "At most {max_bytes} bytes once serialized.",
        "unstorable": "{problem}",
        "too_deep": "{problem}",
    }

    def __init__(self, *, max_bytes: int, **kwargs):
        self.max_bytes = max_bytes
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            self.fail("not_object")
        problem = json_depth_problem(data)
        if problem:
            self.fail("too_deep", problem=problem)
        problem = storable_text_problem(data)
        if problem:
            self.fail("unstorable", problem=problem)
        if len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()) > self.max_bytes:
            self.fail("too_large", max_bytes=self.max_bytes)
        return super().to_internal_value(data)
