from rest_framework import serializers

from config.api.fields import BoundedJSONObjectField, StrictCharField

from .models import EconomicEvent, RewardAction

EVENT_TYPE_PATTERN = r"^[a-z0-9_]+(\.[a-z0-9_]+)+$"


class EventIn(serializers.Serializer):
    external_id = StrictCharField(min_length=1, max_length=200, trim_whitespace=False)
    event_type = StrictCharField(min_length=1, max_length=100, trim_whitespace=False)
    source_service = StrictCharField(min_length=1, max_length=100, trim_whitespace=False)
    actor_user_id = StrictCharField(min_length=1, max_length=100, trim_whitespace=False)
    primary_subject_user_id = StrictCharField(
        min_length=1, max_length=100, required=False, allow_null=True, default=None, trim_whitespace=False
    )
    context = BoundedJSONObjectField(max_bytes=64 * 1024, required=False, default=dict)
    occurred_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

    def validate_event_type(self, value: str) -> str:
        import re

        if not re.fullmatch(EVENT_TYPE_PATTERN, value):
            raise serializers.ValidationError(
                "Lowercase dotted segments of [a-z0-9_] with at least one dot, e.g. 'quest.completed'."
            )
        return value


class RewardActionOut(serializers.ModelSerializer):
    event_id = serializers.UUIDField()
    rule = serializers.CharField(source="rule_code")
    amount = serializers.IntegerField()

    class Meta:
        model = RewardAction
        fields = (
            "id", "event_id", "rule", "rule_version", "target_user_id", "reward_type", "amount", "params",
            "status", "locked_until_condition", "attempts", "last_error", "result", "created_at", "completed_at",
        )  # fmt: skip


class EventOut(serializers.ModelSerializer):
    reward_actions = RewardActionOut(many=True, read_only=True)

    class Meta:
        model = EconomicEvent
        fields = (
            "id", "external_id", "event_type", "source_service", "actor_user_id", "primary_subject_user_id",
            "context", "occurred_at", "status", "error", "received_at", "reward_actions",
        )  # fmt: skip


class RewardActionFilter(serializers.Serializer):
    target_user_id = serializers.CharField(required=False, max_length=100)
    status = serializers.ChoiceField(choices=RewardAction.Status.choices, required=False)
    reward_type = serializers.ChoiceField(choices=RewardAction.RewardType.choices, required=False)
    event_id = serializers.UUIDField(required=False)
