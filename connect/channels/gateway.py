"""``g2a_offchain`` rewards: an off-chain token payout by the gateway (``POST {G2A_GATEWAY_URL}/payouts``),
taken back by a reversal action (``POST {G2A_GATEWAY_URL}/payouts/reverse``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .http import HttpChannel

if TYPE_CHECKING:
    from connect.models import RewardAction


class G2aGatewayChannel(HttpChannel):
    reward_type = "g2a_offchain"
    service = "Token gateway"
    url_setting, token_setting = "G2A_GATEWAY_URL", "G2A_GATEWAY_TOKEN"
    deliver_path, reverse_path = "/payouts", "/payouts/reverse"

    def payload(self, action: RewardAction) -> dict:
        return {
            "user_id": action.target_user_id,
            "amount": action.amount,
            "action_id": str(action.pk),
            "params": action.params or {},
        }

    def reverse_payload(self, action: RewardAction) -> dict:
        return {
            "user_id": action.target_user_id,
            "amount": action.amount,
            "action_id": str(action.reverses_id),
            "reversal_action_id": str(action.pk),
        }
