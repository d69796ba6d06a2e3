"""The seven seed workflows of the Connect document, end to end through the HTTP API with the demo rules."""

import pytest

from connect.models import RewardAction, UserProfile
from points.selectors import account_totals

# On the path production takes: each request its own transaction (autocommit), not inside a test's.
pytestmark = [pytest.mark.usefixtures("demo_rules"), pytest.mark.django_db(transaction=True)]


def _actions(body):
    return sorted(
        ((a["target_user_id"], a["reward_type"], a["amount"], a["status"]) for a in body["reward_actions"]),
    )


def test_first_level_referral_rewards_the_sponsor(services, post_event):
    response = post_event(
        services["referral_service"], external_id="ref-evt-1001", event_type="referral.joined",
        source_service="referral_service", actor_user_id="user_new", primary_subject_user_id="user_sponsor",
        context={"level": 1},
    )  # fmt: skip
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "processed"
    assert _actions(body) == [("user_sponsor", "points", 100, "pending")]
    action = body["reward_actions"][0]
    assert action["rule"] == "referral_first_level_registration" and action["rule_version"] >= 1
    assert UserProfile.objects.get(user_id="user_new").sponsor_id == "user_sponsor"


def test_sub_referral_reward_is_locked_until_the_sponsor_upgrades(services, post_event):
    response = post_event(
        services["referral_service"], external_id="ref-evt-2001", event_type="referral.subjoined",
        source_service="referral_service", actor_user_id="user_sub", primary_subject_user_id="user_sponsor",
        context={"level": 2},
    )  # fmt: skip
    assert response.status_code == 201, response.content
    assert _actions(response.json()) == [("user_sponsor", "points", 50, "locked")]
    assert response.json()["reward_actions"][0]["locked_until_condition"] == "vip_or_pro"
    assert account_totals(user_id="user_sponsor")["balance"] == 0

    upgrade = post_event(
        services["referral_service"], external_id="ref-evt-2002", event_type="referral.user_upgraded_to_vip",
        source_service="referral_service", actor_user_id="user_sponsor",
    )  # fmt: skip
    assert upgrade.status_code == 201, upgrade.content
    assert upgrade.json()["status"] == "ignored"
    # Released at the upgrade's commit and dispatched then (tasks run inline in the tests).
    action = RewardAction.objects.get(target_user_id="user_sponsor")
    assert action.status == RewardAction.Status.COMPLETED
    assert account_totals(user_id="user_sponsor")["balance"] == 50
    assert UserProfile.objects.get(user_id="user_sponsor").is_vip


def test_pro_upgrade_also_releases_vip_or_pro_locks(services, post_event):
    post_event(
        services["referral_service"], external_id="e1", event_type="referral.subjoined",
        source_service="referral_service", actor_user_id="a", primary_subject_user_id="s", context={"level": 2},
    )  # fmt: skip
    assert RewardAction.objects.get(target_user_id="s").status == RewardAction.Status.LOCKED
    post_event(services["user_service"], external_id="e2", event_type="user.upgraded_to_pro",
               source_service="user_service", actor_user_id="s")  # fmt: skip
    assert RewardAction.objects.get(target_user_id="s").status == RewardAction.Status.COMPLETED
    assert account_totals(user_id="s")["balance"] == 50


def test_sponsor_already_vip_gets_the_sub_referral_reward_unlocked(services, post_event):
    post_event(services["user_service"], external_id="u1", event_type="user.upgraded_to_vip",
               source_service="user_service", actor_user_id="vip_sponsor")  # fmt: skip
    response = post_event(
        services["referral_service"], external_id="r1", event_type="referral.subjoined",
        source_service="referral_service", actor_user_id="x", primary_subject_user_id="vip_sponsor",
        context={"level": 2},
    )  # fmt: skip
    assert _actions(response.json()) == [("vip_sponsor", "points", 50, "pending")]


def test_quest_completed_rewards_player_and_author(services, post_event):
    response = post_event(
        services["quest_service"], external_id="q-1", event_type="quest.completed", source_service="quest_service",
        actor_user_id="player", primary_subject_user_id="author",
        context={"quest_id": "q42", "base_reward_points": 45, "total_quests_completed": 3},
    )  # fmt: skip
    assert response.status_code == 201
    assert _actions(response.json()) == [("author", "points", 22, "pending"), ("player", "points", 45, "pending")]


def test_tenth_quest_grants_the_badge_once(services, post_event):
    def quest(n):
        return post_event(
            services["quest_service"], external_id=f"q-{n}", event_type="quest.completed",
            source_service="quest_service", actor_user_id="player", primary_subject_user_id="author",
            context={"base_reward_points": 10, "total_quests_completed": n},
        )  # fmt: skip

    assert ("player", "nft", 1, "pending") not in _actions(quest(9).json())
    tenth = quest(10).json()
    assert ("player", "nft", 1, "pending") in _actions(tenth)
    badge = next(a for a in tenth["reward_actions"] if a["reward_type"] == "nft")
    assert badge["params"] == {"badge_type": "quest_master_10"}
    assert ("player", "nft", 1, "pending") not in _actions(quest(11).json())
    assert RewardAction.objects.filter(reward_type="nft", target_user_id="player").count() == 1


def test_premium_voucher_rewards_partner_promoter_and_buyer(services, post_event):
    response = post_event(
        services["voucher_service"], external_id="v-1", event_type="voucher.premium_purchased",
        source_service="voucher_service", actor_user_id="buyer",
        context={"rf_partner_id": "partner", "pro_promoter_id": "promoter", "amount": 1999},
    )  # fmt: skip
    assert response.status_code == 201
    assert _actions(response.json()) == [
        ("buyer", "points", 10, "pending"),
        ("partner", "g2a_offchain", 199, "pending"),
        ("promoter", "points", 99, "pending"),
    ]


def test_voucher_without_promoter_skips_that_line(services, post_event):
    response = post_event(
        services["voucher_service"], external_id="v-2", event_type="voucher.premium_purchased",
        source_service="voucher_service", actor_user_id="buyer", context={"rf_partner_id": "partner", "amount": 500},
    )  # fmt: skip
    assert _actions(response.json()) == [("buyer", "points", 10, "pending"), ("partner", "g2a_offchain", 50, "pending")]


def test_booking_rewards_tenant_host_and_two_sponsor_levels(services, post_event):
    for n, (user, sponsor) in enumerate([("tenant", "sponsor1"), ("sponsor1", "sponsor2")]):
        post_event(
            services["referral_service"], external_id=f"j{n}", event_type="referral.joined",
            source_service="referral_service", actor_user_id=user, primary_subject_user_id=sponsor,
            context={"level": 1},
        )  # fmt: skip
    response = post_event(
        services["rielt_service"], external_id="b-1", event_type="rielt.booking_paid", source_service="rielt_service",
        actor_user_id="tenant", context={"amount": 25050, "host_user_id": "host", "city": "Tbilisi"},
    )  # fmt: skip
    assert response.status_code == 201
    assert _actions(response.json()) == [
        ("host", "points", 20, "pending"),
        ("sponsor1", "points", 30, "pending"),
        ("sponsor2", "points", 10, "pending"),
        ("tenant", "points", 250, "pending"),
    ]


def test_booking_without_sponsors_rewards_only_tenant_and_host(services, post_event):
    response = post_event(
        services["rielt_service"], external_id="b-2", event_type="rielt.booking_paid", source_service="rielt_service",
        actor_user_id="loner", context={"amount": 1000, "host_user_id": "host"},
    )  # fmt: skip
    assert _actions(response.json()) == [("host", "points", 20, "pending"), ("loner", "points", 10, "pending")]


def test_review_rewards_author_and_curator(services, post_event):
    response = post_event(
        services["rf_service"], external_id="rv-1", event_type="rf_partner.review_created", source_service="rf_service",
        actor_user_id="reviewer", context={"pro_curator_id": "curator", "rating": 5},
    )  # fmt: skip
    assert _actions(response.json()) == [("curator", "points", 2, "pending"), ("reviewer", "points", 5, "pending")]


def test_event_with_no_rule_is_ignored(services, post_event):
    response = post_event(
        services["user_service"], external_id="x-1", event_type="user.logged_in", source_service="user_service",
        actor_user_id="someone",
    )  # fmt: skip
    assert response.status_code == 201
    assert response.json()["status"] == "ignored" and response.json()["reward_actions"] == []
