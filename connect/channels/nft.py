"""``nft`` rewards: a badge minted by the NFT service (``POST {NFT_SERVICE_URL}/badges``), revoked by a
reversal action (``POST {NFT_SERVICE_URL}/badges/revoke``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings

from .base import PermanentChannelError
from .http import deliver_concurrently, json_post

if TYPE_CHECKING:
    from connect.models import RewardAction


class NftChannel:
    reward_type = "nft"
    service = "NFT service"

    def configuration_error(self) -> str | None:
        return None if settings.NFT_SERVICE_URL else "NFT_SERVICE_URL is not configured"

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

    def deliver_many(self, actions: list[RewardAction]) -> dict:
        return deliver_concurrently(self.deliver, actions)

    def deliver(self, action: RewardAction) -> dict:
        return json_post(
            service=self.service,
            base_url=settings.NFT_SERVICE_URL,
            path="/badges",
            token=settings.NFT_SERVICE_TOKEN,
            idempotency_key=str(action.pk),
            payload=self.payload(action),
        )

    def reverse_payload(self, action: RewardAction) -> dict:
        original = action.reverses
        params = original.params if isinstance(original.params, dict) else {}
        return {
            "user_id": action.target_user_id,
            "badge_type": params.get("badge_type"),
            "action_id": str(original.pk),
            "amount": action.amount,
            "reversal_action_id": str(action.pk),
        }

    def reverse_many(self, actions: list[RewardAction]) -> dict:
        return deliver_concurrently(self.reverse, actions)

    def reverse(self, action: RewardAction) -> dict:
        return json_post(
            service=self.service,
            base_url=settings.NFT_SERVICE_URL,
            path="/badges/revoke",
            token=settings.NFT_SERVICE_TOKEN,
            idempotency_key=str(action.pk),
            payload=self.reverse_payload(action),
        )
