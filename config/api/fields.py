import json

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers


def storable_text_problem(value) -> str | None:
    """Why PostgreSQL could not store this JSON value's text (NUL, lone surrogates), or None.

    Text columns and jsonb refuse both; caught late they are a database error, so callers check first.
    """
    if isinstance(value, str):
        if "\x00" in value:
            return "Null characters are not allowed."
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "Surrogate characters are not allowed."
        return None
    if isinstance(value, dict):
        items = [item for pair in value.items() for item in pair]
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        return None
    for item in items:
        problem = storable_text_problem(item)
        if problem:
            return problem
    return None


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
    }

    def __init__(self, *, max_bytes: int, **kwargs):
        self.max_bytes = max_bytes
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            self.fail("not_object")
        problem = storable_text_problem(data)
        if problem:
            self.fail("unstorable", problem=problem)
        if len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()) > self.max_bytes:
            self.fail("too_large", max_bytes=self.max_bytes)
        return super().to_internal_value(data)
