"""End to end with real Celery workers (SPEC §12): a purchase and a quest are rewarded, then refunded;
the workers take the points back from the ledger and ask the NFT service and the token gateway to
revoke what they paid, each once, with the reversal action's id as the Idempotency-Key."""

import json

import pytest

from connect.models import RewardAction
from points.selectors import account_totals
from rules.demo import DEMO_RULES_PATH
from rules.services import rules_import

from .conftest import wait_for
from .helpers import assert_ledger_ok

Status = RewardAction.Status


def balances(*users):
    return {user: account_totals(user_id=user)["balance"] for user in users}


def all_completed(queryset):
    rows = list(queryset.values_list("status", flat=True))
    return bool(rows) and all(status == Status.COMPLETED for status in rows)


@pytest.mark.timeout(180)
def test_purchase_rewarded_then_refunded_takes_the_rewards_back(start_worker, broker, scripted_service, api_for):
    rules_import(payload=json.loads(DEMO_RULES_PATH.read_text()))
    voucher_api = api_for("voucher_service", ["events:write", "events:read"])
    quest_api = api_for("quest_service", ["events:write", "events:read"])
    scripted_service.answer(200, '{"ok": true}')
    worker = start_worker(
        beat=True,
        env={
            "NFT_SERVICE_URL": scripted_service.url,
            "NFT_SERVICE_TOKEN": "nft-token",
            "G2A_GATEWAY_URL": scripted_service.url,
        },
    )

    purchase = voucher_api.post("/api/v1/events", {
        "external_id": "purchase-1", "source_service": "voucher_service", "event_type": "voucher.premium_purchased", "actor_user_id": "buyer",
        "context": {"amount": 1000, "rf_partner_id": "partner", "pro_promoter_id": "promoter"},
    }, format="json")  # fmt: skip
    quest = quest_api.post("/api/v1/events", {
        "external_id": "quest-1", "source_service": "quest_service", "event_type": "quest.completed", "actor_user_id": "player",
        "primary_subject_user_id": "author", "context": {"base_reward_points": 40, "total_quests_completed": 10},
    }, format="json")  # fmt: skip
    assert purchase.status_code == quest.status_code == 201
    originals = RewardAction.objects.filter(reverses__isnull=True)
    wait_for(lambda: originals.count() == 6 and all_completed(originals), timeout=60,
             what="the rewards to be delivered", workers=[worker])  # fmt: skip
    assert balances("promoter", "buyer", "player", "author") == {
        "promoter": 50,
        "buyer": 10,
        "player": 40,
        "author": 20,
    }

    refund = voucher_api.post("/api/v1/events", {
        "external_id": "purchase-1-refund", "source_service": "voucher_service", "event_type": "voucher.refunded", "actor_user_id": "buyer",
        "reverses_external_id": "purchase-1", "reversal_fraction": 0.3,
    }, format="json")  # fmt: skip
    revoke = quest_api.post("/api/v1/events", {
        "external_id": "quest-1-revoked", "source_service": "quest_service", "event_type": "quest.revoked", "actor_user_id": "player",
        "reverses_external_id": "quest-1",
    }, format="json")  # fmt: skip
    assert refund.status_code == revoke.status_code == 201, (refund.json(), revoke.json())
    reversals = RewardAction.objects.filter(reverses__isnull=False)
    wait_for(lambda: reversals.count() == 6 and all_completed(reversals), timeout=60,
             what="the reversals to be delivered", workers=[worker])  # fmt: skip

    # 30% of the purchase's points back (floored), all of the quest's
    assert balances("promoter", "buyer", "player", "author") == {"promoter": 35, "buyer": 7, "player": 0, "author": 0}
    assert all(r.shortfall == 0 for r in reversals.filter(reward_type="points"))
    by_path: dict[str, list] = {}
    for (_, path, headers), (_, body) in zip(scripted_service.calls, scripted_service.bodies, strict=True):
        by_path.setdefault(path, []).append((headers, body))
    badge = originals.get(reward_type="nft")
    badge_reversal = reversals.get(reward_type="nft")
    keys = {headers["Idempotency-Key"] for headers, _ in by_path["/badges/revoke"]}
    assert keys == {str(badge_reversal.pk)}  # once, or the same key again after a lost answer
    headers, body = by_path["/badges/revoke"][0]
    assert headers["Authorization"] == "Bearer nft-token"
    assert body["action_id"] == str(badge.pk) and body["badge_type"] == "quest_master_10" and body["amount"] == 1
    payout_reversal = reversals.get(reward_type="g2a_offchain")
    assert {headers["Idempotency-Key"] for headers, _ in by_path["/payouts/reverse"]} == {str(payout_reversal.pk)}
    assert by_path["/payouts/reverse"][0][1]["amount"] == 30
    assert_ledger_ok()
