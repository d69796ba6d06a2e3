import re

from django.core.validators import RegexValidator
from rest_framework import serializers

from config.api.fields import BoundedJSONObjectField, StrictCharField, StrictUUIDField

from .models import EconomicEvent, RewardAction

EVENT_TYPE_PATTERN = r"^[a-z0-9_]+(\.[a-z0-9_]+)+$"
CONTEXT_MAX_BYTES = 64 * 1024


class _EventTypeValidator(RegexValidator):
    """The whole value must match: ``$`` alone would also let a trailing newline through."""

    def __call__(self, value):
        if not isinstance(value, str) or not re.fullmatch(EVENT_TYPE_PATTERN, value):
            raise serializers.ValidationError(self.message)


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


class RewardActionOut(serializers.ModelSerializer):
    event_id = serializers.UUIDField()
    rule = serializers.CharField(source="rule_code")
    amount = serializers.IntegerField()
    params = serializers.DictField()
    result = serializers.DictField()

    class Meta:
        model = RewardAction
        fields = (
            "id", "event_id", "rule", "rule_version", "target_user_id", "reward_type", "amount", "params",
            "status", "locked_until_condition", "attempts", "last_error", "result", "created_at", "completed_at",
        )  # fmt: skip


class EventOut(serializers.ModelSerializer):
    context = serializers.DictField()
    reward_actions = RewardActionOut(many=True, read_only=True)

    class Meta:
        model = EconomicEvent
        fields = (
            "id", "external_id", "event_type", "source_service", "actor_user_id", "primary_subject_user_id",
            "context", "occurred_at", "status", "error", "received_at", "reward_actions",
        )  # fmt: skip


class RewardActionFilter(serializers.Serializer):
    """The query filters of the reward-action list; an unknown value is a 400, never an empty page."""

    target_user_id = serializers.CharField(required=False, min_length=1, max_length=100, trim_whitespace=False)
    status = serializers.ChoiceField(choices=RewardAction.Status.choices, required=False)
    reward_type = serializers.ChoiceField(choices=RewardAction.RewardType.choices, required=False)
    event_id = StrictUUIDField(required=False)
