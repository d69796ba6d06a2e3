"""Reward channels: one module per way a RewardAction is delivered (see ``base``)."""

from .base import (
    Channel,
    ChannelError,
    ChannelNotConfigured,
    PermanentChannelError,
    TransientChannelError,
    channel_for,
    channels_all,
)

__all__ = [
    "Channel",
    "ChannelError",
    "ChannelNotConfigured",
    "PermanentChannelError",
    "TransientChannelError",
    "channel_for",
    "channels_all",
]
