"""Reward channels: one module per way a RewardAction is delivered (see ``base``), by reward type."""

from .base import Channel, ChannelError, ChannelNotConfigured, PermanentChannelError, TransientChannelError
from .gateway import G2aGatewayChannel
from .nft import NftChannel
from .points import PointsChannel

CHANNELS: dict[str, Channel] = {
    "points": PointsChannel(),
    "nft": NftChannel(),
    "g2a_offchain": G2aGatewayChannel(),
}


def channel_status() -> dict[str, bool]:
    """Which reward types can be delivered now (False: its endpoint is not configured)."""
    return {reward_type: channel.configuration_error() is None for reward_type, channel in CHANNELS.items()}


def channel_problems() -> dict[str, str]:
    """The configuration error of each channel that cannot deliver now, for an admin warning."""
    problems = {reward_type: channel.configuration_error() for reward_type, channel in CHANNELS.items()}
    return {reward_type: problem for reward_type, problem in problems.items() if problem}


__all__ = [
    "CHANNELS",
    "Channel",
    "ChannelError",
    "ChannelNotConfigured",
    "PermanentChannelError",
    "TransientChannelError",
    "channel_problems",
    "channel_status",
]
