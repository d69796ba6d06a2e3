"""The event body's fast validation (``event_in_validated``) against the serializer it stands in for.

Whatever the fast path accepts, the serializer accepts with the same validated data (keys, order,
values); whatever it passes on (None), the serializer still judges. Bodies are generated around the
edges that matter: lengths at and past each limit, NUL and lone surrogates, wrong JSON types, null,
missing and extra keys, event types on and off the pattern, contexts the field refuses.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connect.serializers import CONTEXT_MAX_BYTES, EventIn, event_in_validated

GOOD = {
    "external_id": "quest-42-user-7",
    "event_type": "quest.completed",
    "source_service": "quest_service",
    "actor_user_id": "user-7",
    "primary_subject_user_id": "user-3",
    "context": {"base_reward_points": 100, "nested": {"list": [1, "two", None]}},
}


def _serializer(body):
    serializer = EventIn(data=body)
    return serializer.is_valid(), serializer


def test_a_plain_body_takes_the_fast_path_with_the_serializers_result():
    bodies = (
        GOOD,
        {**GOOD, "primary_subject_user_id": None, "occurred_at": None},
        {k: v for k, v in GOOD.items() if k != "context"},
        {**GOOD, "occurred_at": "2025-01-01T12:00:00Z"},
        {**GOOD, "occurred_at": "2025-01-01T14:00:00+02:00"},
    )
    for body in bodies:
        fast = event_in_validated(body)
        valid, serializer = _serializer(body)
        assert valid and fast is not None
        assert list(fast.items()) == list(serializer.validated_data.items())


def test_bodies_the_fast_path_passes_on_are_judged_by_the_serializer():
    passed_on = [
        [GOOD],  # not an object
        {**GOOD, "occurred_at": "yesterday"},
        {**GOOD, "external_id": ""},
        {**GOOD, "external_id": "x" * 201},
        {**GOOD, "actor_user_id": "a\x00b"},
        {**GOOD, "source_service": "svc\ud800"},
        {**GOOD, "event_type": "quest.completed\n"},
        {**GOOD, "event_type": "Quest.completed"},
        {**GOOD, "primary_subject_user_id": 7},
        {**GOOD, "context": None},
        {**GOOD, "context": [1, 2]},
        {**GOOD, "context": {"text": "x" * CONTEXT_MAX_BYTES}},
        {**GOOD, "context": {"bad": "\x00"}},
        {k: v for k, v in GOOD.items() if k != "actor_user_id"},
    ]
    for body in passed_on:
        assert event_in_validated(body) is None, body
    assert not any(_serializer(body)[0] for body in passed_on)


_CHARS = st.sampled_from(
    ["a", "z", "0", "_", ".", "-", "A", " ", "\n", "\x00", "\ud800", "\udfff", "é", "😀", "/", "\t", "\x7f",
     "\x85", "\u3000", "\ufeff"]
)  # fmt: skip
_TEXT = st.one_of(
    st.text(_CHARS, max_size=8),
    st.integers(0, 210).map(lambda n: "x" * n),
    st.sampled_from(["quest.completed", "a.b", "a.", ".a", "a..b", "a.b.c_1", "ab"]),
)
_VALUE = st.one_of(_TEXT, st.none(), st.integers(), st.booleans(), st.floats(allow_nan=False), st.lists(_TEXT))


def _nested(depth: int, leaf) -> dict:
    value = leaf
    for _ in range(depth - 1):
        value = {"a": value}
    return {"a": value}


_CONTEXT = st.one_of(
    st.dictionaries(_TEXT, st.one_of(_TEXT, st.integers(), st.none(), st.lists(st.integers())), max_size=4),
    _VALUE,
    # Around the nesting limit (32, counting the context itself) and far beyond it, with any text inside.
    st.builds(_nested, st.one_of(st.integers(25, 40), st.integers(400, 3000)), _TEXT),
)
_TIMES = ["2025-01-01T12:00:00Z", "2025-01-01T14:00:00+02:00", "2025-01-01 12:00", "2025-01-01", "2025-13-01T00:00Z"]
_FIELDS = ["external_id", "event_type", "source_service", "actor_user_id", "primary_subject_user_id"]


@st.composite
def _bodies(draw):
    body = dict(GOOD)
    for name in draw(st.lists(st.sampled_from([*_FIELDS, "context", "occurred_at", "extra"]), max_size=4)):
        action = draw(st.sampled_from(["set", "drop"]))
        if action == "drop":
            body.pop(name, None)
        elif name == "context":
            body[name] = draw(_CONTEXT)
        elif name == "occurred_at":
            body[name] = draw(st.one_of(st.none(), st.sampled_from(_TIMES), _TEXT, st.integers()))
        else:
            body[name] = draw(_VALUE)
    return body


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_bodies())
def test_the_fast_path_never_disagrees_with_the_serializer(body):
    fast = event_in_validated(body)
    valid, serializer = _serializer(body)
    if fast is not None:
        assert valid, serializer.errors
        assert list(fast.items()) == list(serializer.validated_data.items())
