"""The outbound edge of dispatch: what a channel promises and the errors it may report.

A channel delivers a batch of RewardActions and gives, per action, the JSON-able result to keep on it;
it also takes back, for a batch of reversal actions (SPEC §12), what their originals paid. It must be
safe to call twice for the same action (the ledger is idempotent on the action id; HTTP channels send
``Idempotency-Key: <action id>``), because a killed worker or a lost acknowledgement re-runs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from connect.models import RewardAction


class ChannelError(Exception):
    """A delivery did not happen; ``message`` is what staff see as the action's ``last_error``."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


class TransientChannelError(ChannelError):
    """Worth trying again later (timeouts, connection errors, 5xx, 408/429, malformed answers).

    ``retry_after`` is the receiver's own hint (seconds), e.g. from a 429's Retry-After header.
    """

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class PermanentChannelError(ChannelError):
    """Trying again cannot help (4xx, redirects, invalid parameters): the action fails at once."""


class ChannelNotConfigured(ChannelError):
    """The channel has no endpoint configured: the action waits, it neither fails nor burns attempts."""


class Channel(Protocol):
    reward_type: str

    def configuration_error(self) -> str | None:
        """Why the channel cannot deliver now (e.g. "NFT_SERVICE_URL is not configured"), or None."""

    def deliver_many(self, actions: list[RewardAction]) -> dict:
        """Deliver the actions; for each action id, the result to store on it or the ChannelError
        that kept it from being delivered. One action's failure never holds back the others."""

    def reverse_many(self, actions: list[RewardAction]) -> dict:
        """Take back what the originals of these reversal actions (``action.reverses``, delivered and
        ``completed``) paid, ``action.amount`` each; per action id like ``deliver_many``. Idempotent
        on the reversal action's id."""
