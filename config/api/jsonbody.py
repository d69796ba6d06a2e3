"""Strict JSON for every body the project reads: the API's parser, the admin's forms, rule files.

Python's decoder keeps the last of two equal keys (``{"amount": 1, "amount": 7}`` is 7) and recurses
once per nesting level, so a deep enough document exhausts the stack while it is decoded, stored, or
rendered. Here a duplicate key anywhere and nesting deeper than ``MAX_JSON_DEPTH`` are refused as
malformed input (SPEC §4), and text PostgreSQL cannot store (NUL, lone surrogates) is named.
"""

import json
import re

from django import forms
from django.core.exceptions import ValidationError
from django.forms.fields import InvalidJSONInput, JSONString
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_JSON_DEPTH = 32


class JSONInputError(ValueError):
    """The text is not acceptable JSON; the message says why, for a person."""


def _no_duplicate_keys(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise JSONInputError(f"Duplicate key {key!r} in a JSON object.")
        seen[key] = value
    return seen


def text_nesting_exceeds(text: str, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than ``limit``: a scan, no recursion."""
    if text.count("[") + text.count("{") <= limit:  # C-speed: most bodies cannot nest that deep at all
        return False
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def storable_text_problem(value) -> str | None:
    """Why PostgreSQL could not store this JSON value's text (NUL, lone surrogates), or None.

    Text columns and jsonb refuse both; caught late they are a database error, so callers check first.
    Walks the value with a stack, so a deeply nested value cannot exhaust the interpreter's.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "Null characters are not allowed."
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "Surrogate characters are not allowed."
        elif isinstance(item, dict):
            stack.extend(part for pair in item.items() for part in pair)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return None


# NUL, and a surrogate code point (only a lone one can be in a ``str``): text and jsonb refuse both.
_UNSTORABLE_CHARACTERS = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str) -> str:
    """``text`` with each character PostgreSQL cannot store (NUL, a lone surrogate) replaced by U+FFFD.

    For text from elsewhere that is kept as it came (another service's answer), where refusing it,
    as input is refused, is not an option.
    """
    return _UNSTORABLE_CHARACTERS.sub("\ufffd", text)


def storable_json(value):
    """A decoded JSON value with ``storable_text`` applied to every string in it, keys included.

    Recursive: call it only on a value no deeper than ``MAX_JSON_DEPTH`` (``json_depth_problem``)."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_text(key): storable_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [storable_json(item) for item in value]
    return value


def json_depth_problem(value, limit: int = MAX_JSON_DEPTH) -> str | None:
    """Why an already decoded value is nested too deeply, or None (iterative, never recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            return f"Nested deeper than {limit} levels."
        stack.extend((child, depth + 1) for child in children)
    return None


def strict_json_loads(text: str | bytes):
    """``json.loads`` refusing duplicate keys, NaN/Infinity and nesting deeper than MAX_JSON_DEPTH.

    Raises JSONInputError with a message fit to show the person who sent the text.
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JSONInputError(f"Not UTF-8 text: {exc}") from None
    if text_nesting_exceeds(text, MAX_JSON_DEPTH):
        raise JSONInputError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels.")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_refuse_constant)
    except JSONInputError:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, or a number too long to convert
        raise JSONInputError(f"Not valid JSON: {exc}") from None


def _refuse_constant(name: str):
    raise JSONInputError(f"{name} is not a JSON number.")


# Values stored before the depth limit existed may be deeper; pages show a notice instead of them.
MAX_RENDERED_DEPTH = 2 * MAX_JSON_DEPTH
TOO_DEEP_NOTICE = f"(not shown: nested deeper than {MAX_RENDERED_DEPTH} levels)"


def json_text(value, **kwargs) -> str:
    """``json.dumps`` for pages that show stored JSON: never a RecursionError, whatever is stored."""
    if json_depth_problem(value, limit=MAX_RENDERED_DEPTH):
        return json.dumps(TOO_DEEP_NOTICE)
    return json.dumps(value, **kwargs)


def stored_json_value(text: str | None):
    """A stored JSON column read as its text (``Cast(field, TextField())``): the value, or the notice
    when it is nested too deeply to decode and show safely (decoding it as a model field would
    recurse once per level, deep in an admin page's stack)."""
    if text is None:
        return None
    if text_nesting_exceeds(text, MAX_RENDERED_DEPTH):
        return TOO_DEEP_NOTICE
    return json.loads(text)


class StrictJSONParser(JSONParser):
    """DRF's JSON parser with ``strict_json_loads``: every refusal is a 400 ``validation_error``."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return strict_json_loads(stream.read() if stream is not None else b"")
        except JSONInputError as exc:
            raise ParseError(str(exc)) from None


class StrictJSONFormField(forms.JSONField):
    """A JSON form field read with ``strict_json_loads`` (no duplicate keys, nesting at most 32 deep)
    whose value PostgreSQL can store (no NUL, no lone surrogates)."""

    def to_python(self, value):
        if self.disabled or value in self.empty_values:
            return super().to_python(value)
        if isinstance(value, (list, dict, int, float, JSONString)):
            return value
        try:
            converted = strict_json_loads(value)
        except JSONInputError as exc:
            raise ValidationError(str(exc), code="invalid") from None
        problem = storable_text_problem(converted)
        if problem:
            raise ValidationError(problem, code="invalid")
        return JSONString(converted) if isinstance(converted, str) else converted

    def bound_data(self, data, initial):
        if self.disabled:
            return initial
        if data is None:
            return None
        try:
            value = strict_json_loads(data)
        except JSONInputError:
            return InvalidJSONInput(data)
        # Shown again as typed: a decoded lone surrogate could not even be written into the page.
        return InvalidJSONInput(data) if storable_text_problem(value) else value
