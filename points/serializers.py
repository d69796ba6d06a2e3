from datetime import UTC

from django.utils.dateparse import parse_datetime
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


class FutureMomentField(serializers.DateTimeField):
    """An RFC 3339 timestamp with its UTC offset, in the future (a lot's expiry)."""

    default_error_messages = {
        "rfc3339": "An RFC 3339 timestamp with a UTC offset is required, e.g. 2030-01-31T00:00:00Z.",
    }

    def to_internal_value(self, data):
        if not isinstance(data, str) or "T" not in data.upper():
            self.fail("rfc3339")
        try:
            moment = parse_datetime(data.replace("z", "Z").replace("t", "T"))
            # In UTC: PostgreSQL refuses offsets Python accepts (up to 24 h), and at the calendar's ends
            # the conversion itself can overflow.
            moment = moment.astimezone(UTC) if moment is not None and moment.tzinfo is not None else None
        except (ValueError, OverflowError):
            moment = None
        if moment is None:
            self.fail("rfc3339")
        return moment  # one in the past is the ledger's refusal (422 expiry_in_past), not a malformed request


_EXPIRES_AT_HELP = (
    "When the points of the lot this opens expire (RFC 3339, in the future); default: POINTS_EXPIRE_AFTER_DAYS "
    "after posting, or never."
)


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
    expires_at = FutureMomentField(required=False, help_text=_EXPIRES_AT_HELP)


class DebitIn(CreditIn):
    expires_at = None


class HoldIn(DebitIn):
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


class StrictBooleanField(serializers.BooleanField):
    """A JSON boolean (DRF would also take "yes", 1 or "false")."""

    default_error_messages = {"invalid": "A JSON boolean is required."}

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class ReverseIn(_OperationIn):
    transaction_id = StrictUUIDField(help_text="A credit, debit or capture this client made.")
    amount = StrictIntegerField(
        min_value=1,
        max_value=MAX_AMOUNT,
        required=False,
        help_text="Points to reverse (default: what is left unreversed of the original).",
    )
    reason = StrictCharField(max_length=200, required=False, allow_blank=True, default="", trim_whitespace=False)
    metadata = BoundedJSONObjectField(
        max_bytes=METADATA_MAX_BYTES,
        required=False,
        default=dict,
        help_text=f"Any JSON object, at most {METADATA_MAX_BYTES} bytes serialized.",
    )
    allow_partial = StrictBooleanField(
        required=False,
        default=False,
        help_text="Credit reversals: take what is available when it is short, and answer the rest as shortfall.",
    )


class BalanceOut(serializers.Serializer):
    balance = serializers.IntegerField()
    held = serializers.IntegerField()
    available = serializers.IntegerField()


class NextExpiryOut(serializers.Serializer):
    amount = serializers.IntegerField()
    expires_at = serializers.DateTimeField()


class AccountOut(BalanceOut):
    user_id = serializers.CharField()
    expiring_soon = serializers.IntegerField(
        help_text="Points whose lots expire within POINTS_EXPIRY_NOTICE_DAYS (default 30)."
    )
    next_expiry = NextExpiryOut(allow_null=True, help_text="The soonest expiry of open lots, or null.")


class LotOut(serializers.Serializer):
    lot_id = serializers.UUIDField(source="id")
    transaction_id = serializers.UUIDField(
        allow_null=True, help_text="The credit or adjustment that opened it; null for a balance older than lots."
    )
    amount = serializers.IntegerField()
    remaining = serializers.IntegerField()
    expires_at = serializers.DateTimeField(allow_null=True, help_text="Null: never.")
    created_at = serializers.DateTimeField()


class ReverseOut(BalanceOut):
    transaction_id = serializers.UUIDField()
    reverses = serializers.UUIDField()
    user_id = serializers.CharField()
    reversed = serializers.IntegerField(help_text="Points reversed.")
    shortfall = serializers.IntegerField(
        help_text="Points asked for that the user no longer had (only with allow_partial; else 0)."
    )


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
    reverses = serializers.UUIDField(source="reverses_id", allow_null=True)


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
    elif kind == "reversal":
        body.update(reverses=canonical_uuid(txn.reverses_id), reversed=txn.amount, shortfall=txn.shortfall)
    return body


def account_body(totals: dict) -> dict:
    """The account endpoint's body from ``selectors.account_totals``."""
    return AccountOut(totals).data
