import copy
import re
from decimal import ROUND_FLOOR, Decimal, InvalidOperation

from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from config.api.fields import (
    BoundedJSONObjectField,
    StrictCharField,
    StrictUUIDField,
    UserIdField,
    canonical_uuid,
)

from .models import EconomicEvent, RewardAction

EVENT_TYPE_PATTERN = r"^[a-z0-9_]+(\.[a-z0-9_]+)+$"
CONTEXT_MAX_BYTES = 64 * 1024


class _EventTypeValidator(RegexValidator):
    """The whole value must match: ``$`` alone would also let a trailing newline through."""

    def __call__(self, value):
        if not isinstance(value, str) or not re.fullmatch(EVENT_TYPE_PATTERN, value):
            raise serializers.ValidationError(self.message)


FRACTION_QUANTUM = Decimal("1e-10")


@extend_schema_field({"type": "number", "minimum": 1e-10, "maximum": 1, "nullable": True})
class ReversalFractionField(serializers.Field):
    """A JSON number 1e-10 <= f <= 1 kept as an exact decimal (``0.3`` is 3/10, not the nearest
    float), rounded down to 10 decimal places (``1/3`` takes back 0.3333333333 of each amount)."""

    default_error_messages = {"invalid": "A number from 0.0000000001 to 1."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        try:
            value = Decimal(str(data))
        except InvalidOperation:
            self.fail("invalid")
        if not value.is_finite() or not (FRACTION_QUANTUM <= value <= 1):
            self.fail("invalid")
        return value.quantize(FRACTION_QUANTUM, rounding=ROUND_FLOOR)

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
    actor_user_id = UserIdField()
    primary_subject_user_id = UserIdField(required=False, allow_null=True, default=None)
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
        help_text="The share taken back, 0 < f <= 1 (default 1; rounded down to 10 decimal places); only with "
        "reverses_external_id (given without it: 400). Each action loses floor(amount × f), never more in total "
        "than its amount.",
    )

    def get_fields(self):
        """Shallow copies of fields built once per class, instead of DRF's deep copy of every declared
        field for each serializer (half the cost of validating an event body). A field keeps no state
        of its own while it validates; binding sets the copy's name and parent, never the original's."""
        cls = type(self)
        fields = cls.__dict__.get("unbound_fields")
        if fields is None:
            fields = super().get_fields()  # DRF's: a deep copy of the declared fields
            cls.unbound_fields = fields
        return {name: copy.copy(field) for name, field in fields.items()}

    def validate(self, attrs):
        if attrs.get("reversal_fraction") is not None and attrs.get("reverses_external_id") is None:
            raise serializers.ValidationError({"reversal_fraction": ["Only with reverses_external_id."]})
        return attrs


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
        "id": canonical_uuid(action.id),
        "event_id": canonical_uuid(action.event_id),
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
        "id": canonical_uuid(event.id),
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

    target_user_id = UserIdField(required=False)
    status = serializers.ChoiceField(choices=RewardAction.Status.choices, required=False)
    reward_type = serializers.ChoiceField(choices=RewardAction.RewardType.choices, required=False)
    event_id = StrictUUIDField(required=False)
    reverses = StrictUUIDField(required=False, help_text="The reversal actions of this reward action (SPEC §12).")


class TraceLineOut(serializers.Serializer):
    position = serializers.IntegerField(help_text="The reward line's position in its rule.")
    reward_type = serializers.CharField()
    target = serializers.CharField(allow_null=True, help_text="The user the line's target gave, if any.")
    amount = serializers.IntegerField(allow_null=True, help_text="What the line paid (or would have).")
    result = serializers.CharField(
        help_text="fired, no_target, amount_not_positive, cap_reached, period_cap_reached, budget_exhausted, "
        "budget_partial:<paid>, locked:<condition>."
    )
    detail = serializers.CharField(help_text="The same, for people.")


class TraceRuleOut(serializers.Serializer):
    rule = serializers.CharField(help_text="The rule's code.")
    version = serializers.IntegerField()
    result = serializers.CharField(
        help_text="matched, condition_false, outside_window, stopped_by:<rule code>, or error."
    )
    detail = serializers.CharField(help_text="The same, for people.")
    lines = TraceLineOut(many=True)


class ProfileChangeOut(serializers.Serializer):
    user_id = serializers.CharField()
    field = serializers.CharField(help_text="sponsor, is_vip or is_pro.")
    to = serializers.JSONField(help_text="The new value.")

    def get_fields(self):
        fields = super().get_fields()
        fields["from"] = serializers.JSONField(help_text="The value before.")
        return fields


class EventTraceOut(serializers.Serializer):
    """The decision stored with an event (SPEC §15)."""

    event_id = serializers.UUIDField()
    status = serializers.CharField(help_text="The event's status: processed, ignored or failed.")
    rules = TraceRuleOut(many=True, help_text="Each active rule of the event's type, in the order they ran.")
    profile_changes = ProfileChangeOut(many=True, help_text="What the event changed in user profiles.")
    released_actions = serializers.ListField(
        child=serializers.UUIDField(), help_text="Locked reward actions this event released to pending."
    )


def event_trace_data(event: EconomicEvent) -> dict:
    trace = event.trace or {}
    return {
        "event_id": _text(event.id),
        "status": _text(event.status),
        "rules": trace.get("rules", []),
        "profile_changes": trace.get("profile_changes", []),
        "released_actions": trace.get("released_actions", []),
    }
