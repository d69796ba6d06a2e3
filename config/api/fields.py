import json

from rest_framework import serializers


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


class BoundedJSONObjectField(serializers.JSONField):
    """A JSON object whose serialized form stays within ``max_bytes``."""

    default_error_messages = {
        "not_object": "A JSON object is required.",
        "too_large": "At most {max_bytes} bytes once serialized.",
    }

    def __init__(self, *, max_bytes: int, **kwargs):
        self.max_bytes = max_bytes
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            self.fail("not_object")
        if len(json.dumps(data, separators=(",", ":")).encode()) > self.max_bytes:
            self.fail("too_large", max_bytes=self.max_bytes)
        return super().to_internal_value(data)


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    details = serializers.DictField()


class ErrorSerializer(serializers.Serializer):
    """SPEC §4 error body."""

    error = ErrorDetailSerializer()
