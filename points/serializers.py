from rest_framework import serializers

from config.api.fields import BoundedJSONObjectField, StrictCharField, StrictIntegerField, StrictUUIDField

from .services import MAX_AMOUNT, MAX_HOLD_SECONDS


class _OperationIn(serializers.Serializer):
    external_id = StrictCharField(min_length=1, max_length=200, trim_whitespace=False)


class CreditIn(_OperationIn):
    user_id = StrictCharField(min_length=1, max_length=100, trim_whitespace=False)
    amount = StrictIntegerField(min_value=1, max_value=MAX_AMOUNT)
    reason = StrictCharField(max_length=200, required=False, allow_blank=True, default="", trim_whitespace=False)
    metadata = BoundedJSONObjectField(max_bytes=16 * 1024, required=False, default=dict)


class DebitIn(CreditIn):
    pass


class HoldIn(CreditIn):
    expires_in = StrictIntegerField(min_value=1, max_value=MAX_HOLD_SECONDS, required=False)


class CaptureIn(_OperationIn):
    hold_id = StrictUUIDField()
    amount = StrictIntegerField(min_value=1, max_value=MAX_AMOUNT, required=False)


class ReleaseIn(_OperationIn):
    hold_id = StrictUUIDField()


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
    status = serializers.CharField()
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
    kind = serializers.CharField()
    amount = serializers.IntegerField()
    reason = serializers.CharField()
    metadata = serializers.JSONField()
    external_id = serializers.CharField()
    hold_id = serializers.UUIDField(allow_null=True)
    created_at = serializers.DateTimeField()
    balance_after = serializers.IntegerField()
    held_after = serializers.IntegerField()
    available_after = serializers.IntegerField()


def operation_result(txn) -> dict:
    """The response of an operation, rebuilt from its stored Transaction (so a replay is identical)."""
    body = {
        "transaction_id": str(txn.pk),
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
            hold_id=str(txn.hold_id),
            amount=txn.amount,
            status="active",
            expires_at=serializers.DateTimeField().to_representation(txn.hold.expires_at),
        )
    elif kind == "capture":
        body.update(hold_id=str(txn.hold_id), captured=txn.amount, released=txn.hold.amount - txn.amount)
    elif kind in ("release", "expiry"):
        body.update(hold_id=str(txn.hold_id), released=txn.amount)
    return body
