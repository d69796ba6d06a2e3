"""``g2a_offchain`` rewards: an off-chain token payout by the gateway (``POST {G2A_GATEWAY_URL}/payouts``),
taken back by a reversal action (``POST {G2A_GATEWAY_URL}/payouts/reverse``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings

from .http import deliver_concurrently, json_post

if TYPE_CHECKING:
    from connect.models import RewardAction


class G2aGatewayChannel:
    reward_type = "g2a_offchain"
    service = "Token gateway"

    def configuration_error(self) -> str | None:
        return None if settings.G2A_GATEWAY_URL else "G2A_GATEWAY_URL is not configured"

    def payload(self, action: RewardAction) -> dict:
        return {
            "user_id": action.target_user_id,
            "amount": action.amount,
            "action_id": str(action.pk),
            "params": action.params or {},
        }

    def deliver_many(self, actions: list[RewardAction]) -> dict:
        return deliver_concurrently(self.deliver, actions)

    def deliver(self, action: RewardAction) -> dict:
        return json_post(
            service=self.service,
            base_url=settings.G2A_GATEWAY_URL,
            path="/payouts",
            token=settings.G2A_GATEWAY_TOKEN,
            idempotency_key=str(action.pk),
            payload=self.payload(action),
        )

    def reverse_payload(self, action: RewardAction) -> dict:
        return {
            "user_id": action.target_user_id,
            "amount": action.amount,
            "action_id": str(action.reverses_id),
            "reversal_action_id": str(action.pk),
        }

    def reverse_many(self, actions: list[RewardAction]) -> dict:
        return deliver_concurrently(self.reverse, actions)

    def reverse(self, action: RewardAction) -> dict:
        return json_post(
            service=self.service,
            base_url=settings.G2A_GATEWAY_URL,
            path="/payouts/reverse",
            token=settings.G2A_GATEWAY_TOKEN,
            idempotency_key=str(action.pk),
            payload=self.reverse_payload(action),
        )
