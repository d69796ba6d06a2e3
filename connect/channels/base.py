"""The outbound edge of dispatch: what a channel promises, the errors it may raise, and the registry.

A channel delivers one RewardAction and returns the JSON-able result to keep on the action. It must be
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

    def deliver(self, action: RewardAction) -> dict:
        """Deliver the action; return the result to store on it, or raise a ChannelError."""


_registry: dict[str, Channel] = {}


def channel_register(channel: Channel) -> Channel:
    _registry[channel.reward_type] = channel
    return channel


def channel_for(reward_type: str) -> Channel:
    """The channel of a reward type; PermanentChannelError for a type no channel serves."""
    _load_builtin_channels()
    try:
        return _registry[reward_type]
    except KeyError:
        raise PermanentChannelError(f"No channel delivers reward type '{reward_type}'.") from None


def channels_all() -> dict[str, Channel]:
    _load_builtin_channels()
    return dict(_registry)


def _load_builtin_channels() -> None:
    # Imported here, not at module load, so the channel modules can import this one.
    from . import gateway, nft, points  # noqa: F401
