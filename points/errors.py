from config.api.errors import DomainError, IdempotencyConflict, NotFound

__all__ = [
    "CaptureExceedsHold",
    "HoldNotActive",
    "IdempotencyConflict",
    "InsufficientFunds",
    "LedgerError",
    "NotFound",
]


class LedgerError(DomainError):
    status_code = 422


class InsufficientFunds(LedgerError):
    code = "insufficient_funds"
    default_message = "The account's available points do not cover this amount."


class HoldNotActive(LedgerError):
    code = "hold_not_active"
    default_message = "The hold is no longer active (captured, released or expired)."


class CaptureExceedsHold(LedgerError):
    code = "capture_exceeds_hold"
    default_message = "The capture amount exceeds the held amount."
