from rest_framework import serializers

from config.api.fields import (
    BoundedJSONObjectField,
    StrictCharField,
    StrictIntegerField,
    StrictUUIDField,
    UserIdField,
    canonical_uuid,
)

from .models import Transaction
from .services import MAX_AMOUNT, MAX_HOLD_SECONDS

METADATA_MAX_BYTES = 16 * 1024


class _OperationIn(serializers.Serializer):
    external_id = StrictCharField(
        min_length=1,
        max_length=200,
        trim_whitespace=False,
        help_text="The caller's idempotency key, unique per client forever: a repeat with the same payload "
        "replays the original result (200), with another payload is a 409. A refused request does not use it up.",
    )


class CreditIn(_OperationIn):
    user_id = UserIdField()
    amount = StrictIntegerField(min_value=1, max_value=MAX_AMOUNT, help_text="Points, a JSON integer.")
    reason = StrictCharField(max_length=200, required=False, allow_blank=True, default="", trim_whitespace=False)
    metadata = BoundedJSONObjectField(
        max_bytes=METADATA_MAX_BYTES,
        required=False,
        default=dict,
        help_text=f"Any JSON object, at most {METADATA_MAX_BYTES} bytes serialized.",
    )


class DebitIn(CreditIn):
    pass


class HoldIn(CreditIn):
    expires_in = StrictIntegerField(
        min_value=1,
        max_value=MAX_HOLD_SECONDS,
        required=False,
        help_text="Seconds until the hold expires and is released (default POINTS_DEFAULT_HOLD_SECONDS, 15 minutes).",
    )


class CaptureIn(_OperationIn):
    hold_id = StrictUUIDField(help_text="A hold this client placed.")
    amount = StrictIntegerField(
        min_value=1,
        max_value=MAX_AMOUNT,
        required=False,
        help_text="Points to capture (default: all of the hold); the rest is released.",
    )


class ReleaseIn(_OperationIn):
    hold_id = StrictUUIDField(help_text="A hold this client placed.")


class BalanceOut(serializers.Serializer):
    balance = serializers.IntegerField()
    held = serializers.IntegerField()
    available = serializers.IntegerField()


class AccountOut(BalanceOut):
    user_id = serializers.CharField()


class CreditOut(BalanceOut):
    transaction_id = serializers.UUIDField()
    user_id = serializers.CharField()
    amount = serializers.IntegerField()


class HoldOut(BalanceOut):
    hold_id = StrictUUIDField()
    transaction_id = serializers.UUIDField()
    user_id = serializers.CharField()
    amount = serializers.IntegerField()
    status = serializers.ChoiceField(choices=[("active", "Active")])
    expires_at = serializers.DateTimeField()


class CaptureOut(BalanceOut):
    transaction_id = serializers.UUIDField()
    hold_id = StrictUUIDField()
    user_id = serializers.CharField()
    captured = serializers.IntegerField()
    released = serializers.IntegerField()


class ReleaseOut(BalanceOut):
    transaction_id = serializers.UUIDField()
    hold_id = StrictUUIDField()
    user_id = serializers.CharField()
    released = serializers.IntegerField()


class HistoryItemOut(serializers.Serializer):
    transaction_id = serializers.UUIDField(source="id")
    kind = serializers.ChoiceField(choices=Transaction.Kind.choices)
    amount = serializers.IntegerField()
    reason = serializers.CharField()
    metadata = serializers.DictField()
    external_id = serializers.CharField()
    hold_id = serializers.UUIDField(allow_null=True)
    created_at = serializers.DateTimeField()
    balance_after = serializers.IntegerField()
    held_after = serializers.IntegerField()
    available_after = serializers.IntegerField()


def operation_result(txn) -> dict:
    """The response of an operation, rebuilt from its stored Transaction (so a replay is identical)."""
    body = {
        "transaction_id": canonical_uuid(txn.pk),
        "user_id": txn.account.user_id,
        "balance": txn.balance_after,
        "held": txn.held_after,
        "available": txn.available_after,
    }
    kind = txn.kind
    if kind in ("credit", "debit"):
        body["amount"] = txn.amount
    elif kind == "hold":
        body.update(
            hold_id=canonical_uuid(txn.hold_id),
            amount=txn.amount,
            status="active",
            expires_at=serializers.DateTimeField().to_representation(txn.hold.expires_at),
        )
    elif kind == "capture":
        body.update(hold_id=canonical_uuid(txn.hold_id), captured=txn.amount, released=txn.hold.amount - txn.amount)
    elif kind in ("release", "expiry"):
        body.update(hold_id=canonical_uuid(txn.hold_id), released=txn.amount)
    return body
