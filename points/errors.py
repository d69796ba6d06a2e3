from config.api.errors import DomainError, IdempotencyConflict, NotFound

__all__ = [
    "CaptureExceedsHold",
    "ExpiryInPast",
    "HoldNotActive",
    "IdempotencyConflict",
    "InsufficientFunds",
    "InvalidRequest",
    "LedgerError",
    "NotFound",
    "NotReversible",
    "ReversalExceedsOriginal",
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


class ReversalExceedsOriginal(LedgerError):
    code = "reversal_exceeds_original"
    default_message = "The reversal would take the reversed parts beyond the original amount."


class NotReversible(LedgerError):
    code = "not_reversible"
    default_message = "Only a credit, debit or capture can be reversed."


class ExpiryInPast(LedgerError):
    code = "expiry_in_past"
    default_message = "The lot's expires_at must be in the future."


class InvalidRequest(DomainError):
    """A service was called with input the ledger never accepts (the API's serializers refuse it first)."""

    status_code = 400
    code = "validation_error"
    default_message = "The request is invalid."
