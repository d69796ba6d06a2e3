"""``nft`` rewards: a badge minted by the NFT service (``POST {NFT_SERVICE_URL}/badges``), revoked by a
reversal action (``POST {NFT_SERVICE_URL}/badges/revoke``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import PermanentChannelError
from .http import HttpChannel

if TYPE_CHECKING:
    from connect.models import RewardAction


class NftChannel(HttpChannel):
    reward_type = "nft"
    service = "NFT service"
    url_setting, token_setting = "NFT_SERVICE_URL", "NFT_SERVICE_TOKEN"
    deliver_path, reverse_path = "/badges", "/badges/revoke"

    def payload(self, action: RewardAction) -> dict:
        params = action.params or {}
        badge_type = params.get("badge_type") if isinstance(params, dict) else None
        if not isinstance(badge_type, str) or not badge_type:
            raise PermanentChannelError("An nft reward needs params.badge_type (a non-empty string).")
        return {
            "user_id": action.target_user_id,
            "badge_type": badge_type,
            "action_id": str(action.pk),
            "params": params,
        }

    def reverse_payload(self, action: RewardAction) -> dict:
        # ``reverses`` is loaded with the batch (delivery._reversals_held), not one query per action.
        original = action.reverses
        params = original.params if isinstance(original.params, dict) else {}
        return {
            "user_id": action.target_user_id,
            "badge_type": params.get("badge_type"),
            "action_id": str(original.pk),
            "amount": action.amount,
            "reversal_action_id": str(action.pk),
        }
