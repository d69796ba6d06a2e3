import copy
import re
from decimal import Decimal, InvalidOperation

from django.core.validators import RegexValidator
from rest_framework import serializers

from config.api.fields import BoundedJSONObjectField, StrictCharField, StrictUUIDField, storable_text_problem

from .models import EconomicEvent, RewardAction

EVENT_TYPE_PATTERN = r"^[a-z0-9_]+(\.[a-z0-9_]+)+$"
CONTEXT_MAX_BYTES = 64 * 1024


class _EventTypeValidator(RegexValidator):
    """The whole value must match: ``$`` alone would also let a trailing newline through."""

    def __call__(self, value):
        if not isinstance(value, str) or not re.fullmatch(EVENT_TYPE_PATTERN, value):
            raise serializers.ValidationError(self.message)


class ReversalFractionField(serializers.Field):
    """A JSON number 0 < f <= 1, kept as an exact decimal (``0.3`` is 3/10, not the nearest float)."""

    default_error_messages = {
        "invalid": "A number greater than 0 and at most 1.",
        "precision": "At most 10 decimal places.",
    }

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        try:
            value = Decimal(str(data))
        except InvalidOperation:
            self.fail("invalid")
        if not value.is_finite() or not (0 < value <= 1):
            self.fail("invalid")
        if value.as_tuple().exponent < -10:
            self.fail("precision")
        return value

    def to_representation(self, value):
        return None if value is None else float(value)


class EventIn(serializers.Serializer):
    external_id = StrictCharField(
        min_length=1,
        max_length=200,
        trim_whitespace=False,
        help_text="The caller's id of the event, unique per source_service: a repeat with the same payload "
        "returns the stored event (200), with another payload is a 409.",
    )
    event_type = StrictCharField(
        min_length=1,
        max_length=100,
        trim_whitespace=False,
        validators=[
            _EventTypeValidator(
                EVENT_TYPE_PATTERN,
                message="Lowercase dotted segments of [a-z0-9_] with at least one dot, e.g. 'quest.completed'.",
            )
        ],
    )
    source_service = StrictCharField(
        min_length=1,
        max_length=100,
        trim_whitespace=False,
        help_text="Must be the calling client's name (403 otherwise).",
    )
    actor_user_id = StrictCharField(min_length=1, max_length=100, trim_whitespace=False)
    primary_subject_user_id = StrictCharField(
        min_length=1, max_length=100, required=False, allow_null=True, default=None, trim_whitespace=False
    )
    context = BoundedJSONObjectField(
        max_bytes=CONTEXT_MAX_BYTES,
        required=False,
        default=dict,
        help_text=f"Any JSON object, at most {CONTEXT_MAX_BYTES} bytes serialized; what the rules read.",
    )
    occurred_at = serializers.DateTimeField(
        required=False,
        allow_null=True,
        default=None,
        help_text="When it happened (RFC 3339); rules' validity windows use it, else received_at.",
    )
    reverses_external_id = StrictCharField(
        min_length=1,
        max_length=200,
        required=False,
        allow_null=True,
        default=None,
        trim_whitespace=False,
        help_text="A refund or cancellation: the external_id of an earlier event of the same source_service whose "
        "rewards this event takes back (SPEC §12). Unknown → 422 `original_event_not_found`; an event that is "
        "itself a reversal → 422 `not_reversible`.",
    )
    reversal_fraction = ReversalFractionField(
        required=False,
        allow_null=True,
        default=None,
        help_text="The share taken back, 0 < f <= 1 (default 1), at most 10 decimal places; only with "
        "reverses_external_id. Each action loses floor(amount × f), never more in total than its amount.",
    )

    def validate(self, attrs):
        if attrs.get("reversal_fraction") is not None and attrs.get("reverses_external_id") is None:
            raise serializers.ValidationError({"reversal_fraction": ["Only with reverses_external_id."]})
        return attrs


# What the fast path below reads from EventIn's own fields: the most characters of each required
# string and of the subject, and copies of the context and occurred_at fields (their checks need no
# binding).
_EVENT_TEXT_FIELDS = {
    name: EventIn._declared_fields[name].max_length
    for name in ("external_id", "event_type", "source_service", "actor_user_id")
}
_SUBJECT_MOST = EventIn._declared_fields["primary_subject_user_id"].max_length
_CONTEXT_FIELD = copy.deepcopy(EventIn._declared_fields["context"])
_OCCURRED_AT_FIELD = copy.deepcopy(EventIn._declared_fields["occurred_at"])


def event_in_validated(data) -> dict | None:
    """``EventIn(data=data).validated_data`` for a body every field takes as it stands, or None.

    DRF's validation of an event body (fields deep-copied per request, then per field the empty-value
    handling and four or five validator objects) cost about 0.2 ms of an event POST's 1.8 ms of CPU.
    This checks the same conditions directly: every string a JSON string of 1 to its most characters,
    without NUL or lone surrogates; the event type on its pattern; the subject missing, null or such a
    string; the context and ``occurred_at`` missing, or values their own fields accept. Anything else
    (a missing or null field, a wrong type, a bad length) gives None and goes through the serializer,
    which also words the errors. The result has the serializer's keys, order and values; a test
    compares the two on generated bodies.
    """
    if type(data) is not dict or data.get("reverses_external_id") is not None or "reversal_fraction" in data:
        return None
    validated = {}
    for name, most in _EVENT_TEXT_FIELDS.items():
        value = data.get(name)
        if not _plain_text(value, most):
            return None
        validated[name] = value
    if not re.fullmatch(EVENT_TYPE_PATTERN, validated["event_type"]):
        return None
    subject = data.get("primary_subject_user_id")
    if subject is not None and not _plain_text(subject, _SUBJECT_MOST):
        return None
    validated["primary_subject_user_id"] = subject
    if "context" in data:
        try:
            validated["context"] = _CONTEXT_FIELD.run_validation(data["context"])
        except serializers.ValidationError:
            return None
    else:
        validated["context"] = {}
    occurred_at = data.get("occurred_at")
    if occurred_at is None:
        validated["occurred_at"] = None
    else:
        try:
            validated["occurred_at"] = _OCCURRED_AT_FIELD.run_validation(occurred_at)
        except serializers.ValidationError:
            return None
    validated["reverses_external_id"] = validated["reversal_fraction"] = None
    return validated


def _plain_text(value, most: int) -> bool:
    return type(value) is str and 1 <= len(value) <= most and storable_text_problem(value) is None


# The response serializers below write their output by hand: a ModelSerializer builds (and deep-copies)
# its fields for every instance it is created for, a large share of each events request. The declared
# fields and Meta stay, for the OpenAPI schema; the helpers give each value exactly as the field the
# ModelSerializer would build for it does, a None staying None as in Serializer.to_representation.
_DATETIME = serializers.DateTimeField()  # reads the format and current time zone at each call, as a bound one


def _text(value):
    # Also the choice fields (status, reward type): str() of a TextChoices member is its value.
    return None if value is None else str(value)


def _int(value):
    return None if value is None else int(value)


def _datetime(value):
    return None if value is None else _DATETIME.to_representation(value)


def _dict(value):
    return None if value is None else {str(key): item for key, item in value.items()}


def _reward_action_data(action: RewardAction) -> dict:
    return {
        "id": _text(action.id),
        "event_id": _text(action.event_id),
        "rule": _text(action.rule_code),
        "rule_version": _int(action.rule_version),
        "target_user_id": _text(action.target_user_id),
        "reward_type": _text(action.reward_type),
        "amount": _int(action.amount),
        "params": _dict(action.params),
        "status": _text(action.status),
        "locked_until_condition": _text(action.locked_until_condition),
        "attempts": _int(action.attempts),
        "last_error": _text(action.last_error),
        "result": _dict(action.result),
        "created_at": _datetime(action.created_at),
        "completed_at": _datetime(action.completed_at),
        "reverses": _text(action.reverses_id),
        "reversed_amount": _int(action.reversed_amount),
        "shortfall": _int(action.shortfall),
    }


class RewardActionOut(serializers.ModelSerializer):
    event_id = serializers.UUIDField()
    rule = serializers.CharField(source="rule_code")
    amount = serializers.IntegerField()
    reverses = serializers.UUIDField(
        source="reverses_id", allow_null=True, help_text="For a reversal action, the action it takes back."
    )
    reversed_amount = serializers.IntegerField(help_text="How much of this action was taken back so far.")
    shortfall = serializers.IntegerField(
        allow_null=True, help_text="For a points reversal: what the user no longer had and could not be taken back."
    )
    params = serializers.DictField()
    result = serializers.DictField()

    class Meta:
        model = RewardAction
        fields = (
            "id", "event_id", "rule", "rule_version", "target_user_id", "reward_type", "amount", "params",
            "status", "locked_until_condition", "attempts", "last_error", "result", "created_at", "completed_at",
            "reverses", "reversed_amount", "shortfall",
        )  # fmt: skip

    def to_representation(self, instance):
        return _reward_action_data(instance)


class EventOut(serializers.ModelSerializer):
    context = serializers.DictField()
    reversal_fraction = serializers.FloatField(allow_null=True)
    reward_actions = RewardActionOut(many=True, read_only=True)

    class Meta:
        model = EconomicEvent
        fields = (
            "id", "external_id", "event_type", "source_service", "actor_user_id", "primary_subject_user_id",
            "context", "occurred_at", "reverses_external_id", "reversal_fraction", "status", "error", "received_at",
            "reward_actions",
        )  # fmt: skip

    def to_representation(self, instance):
        # In the order the (prefetched) queryset gives them.
        return event_out_data(instance, instance.reward_actions.all())


def event_out_data(event: EconomicEvent, actions) -> dict:
    """``EventOut``'s representation of ``event`` with these reward actions, in the order given: the
    event POST answers with the rows it has just written, without a queryset to carry them."""
    return {
        "id": _text(event.id),
        "external_id": _text(event.external_id),
        "event_type": _text(event.event_type),
        "source_service": _text(event.source_service),
        "actor_user_id": _text(event.actor_user_id),
        "primary_subject_user_id": _text(event.primary_subject_user_id),
        "context": _dict(event.context),
        "occurred_at": _datetime(event.occurred_at),
        "reverses_external_id": _text(event.reverses_external_id),
        "reversal_fraction": None if event.reversal_fraction is None else float(event.reversal_fraction),
        "status": _text(event.status),
        "error": _text(event.error),
        "received_at": _datetime(event.received_at),
        "reward_actions": [_reward_action_data(action) for action in actions],
    }


class RewardActionFilter(serializers.Serializer):
    """The query filters of the reward-action list; an unknown value is a 400, never an empty page."""

    target_user_id = serializers.CharField(required=False, min_length=1, max_length=100, trim_whitespace=False)
    status = serializers.ChoiceField(choices=RewardAction.Status.choices, required=False)
    reward_type = serializers.ChoiceField(choices=RewardAction.RewardType.choices, required=False)
    event_id = StrictUUIDField(required=False)
    reverses = StrictUUIDField(required=False, help_text="The reversal actions of this reward action (SPEC §12).")
