"""EventIn binds shallow copies of fields built once: it must validate exactly as DRF's own
get_fields (a deep copy of every declared field per serializer) does."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rest_framework import serializers as drf

from connect.serializers import EventIn


class DeepCopiedEventIn(EventIn):
    def get_fields(self):
        return drf.Serializer.get_fields(self)


def outcome(cls, body):
    serializer = cls(data=body)
    if serializer.is_valid():
        return True, dict(serializer.validated_data)
    return False, serializer.errors


VALID = {
    "external_id": "e-1",
    "event_type": "quest.completed",
    "source_service": "svc",
    "actor_user_id": "u-1",
    "primary_subject_user_id": "u-2",
    "context": {"points": 5},
    "occurred_at": "2025-01-01T12:00:00Z",
}

BODIES = [
    VALID,
    {**VALID, "primary_subject_user_id": None, "occurred_at": None},
    {key: value for key, value in VALID.items() if key not in ("context", "occurred_at", "primary_subject_user_id")},
    {**VALID, "event_type": "Quest"},
    {**VALID, "external_id": ""},
    {**VALID, "external_id": 5},
    {**VALID, "actor_user_id": "a/b"},
    {**VALID, "context": []},
    {**VALID, "occurred_at": "yesterday"},
    {**VALID, "reversal_fraction": 0.5},
    {**VALID, "reverses_external_id": "e-0", "reversal_fraction": 0.25},
    {**VALID, "reverses_external_id": "e-0", "reversal_fraction": 2},
    {},
    None,
    [],
    "text",
]


@pytest.mark.parametrize("body", BODIES)
def test_event_in_validates_as_with_drf_deep_copied_fields(body):
    assert outcome(EventIn, body) == outcome(DeepCopiedEventIn, body)


_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12), st.just({})
)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([*VALID, "reverses_external_id", "reversal_fraction", "other"]), _values, max_size=9
    ),
    st.booleans(),
)
def test_event_in_validates_generated_bodies_as_drf_does(changes, start_valid):
    body = {**(VALID if start_valid else {}), **changes}
    assert outcome(EventIn, body) == outcome(DeepCopiedEventIn, body)


def test_the_fields_built_once_stay_unbound():
    for body in BODIES:
        outcome(EventIn, body)
    first, second = EventIn(data=VALID), EventIn(data=VALID)
    assert first.fields["external_id"] is not second.fields["external_id"]
    assert first.fields["external_id"].parent is first
    assert all(field.parent is None for field in EventIn.unbound_fields.values())
