"""Reversal events (SPEC §12), at ingest: what a refund does to the original event's reward actions."""

import threading
from decimal import Decimal

import pytest
from django.db import connection

from connect.models import EconomicEvent, RewardAction, RewardGrant
from connect.reversals import gross_amount, reversed_share

VOUCHER = {
    "event_type": "voucher.premium_purchased",
    "source_service": "voucher_service",
    "actor_user_id": "buyer",
    "context": {"amount": 1000, "rf_partner_id": "partner", "pro_promoter_id": "promoter"},
}


def voucher(services, post_event, external_id="purchase-1", **extra):
    return post_event(services["voucher_service"], external_id=external_id, **{**VOUCHER, **extra})


def refund(services, post_event, external_id="refund-1", reverses="purchase-1", **extra):
    body = {
        "event_type": "voucher.refunded",
        "source_service": "voucher_service",
        "actor_user_id": "buyer",
        "reverses_external_id": reverses,
        **extra,
    }
    return post_event(services["voucher_service"], external_id=external_id, **body)


def actions_of(event_id):
    return {a.target_user_id: a for a in RewardAction.objects.filter(event_id=event_id, reverses__isnull=True)}


def mark_completed(event_id):
    RewardAction.objects.filter(event_id=event_id).update(status=RewardAction.Status.COMPLETED, attempts=1)


@pytest.mark.parametrize(
    "gross, fraction, share",
    [(100, "1", 100), (100, "0.3", 30), (7, "0.5", 3), (1, "0.5", 0), (10, "0.1", 1), (3, "0.3333333333", 0)],
)
def test_the_share_is_floored_in_exact_decimal_arithmetic(gross, fraction, share):
    assert reversed_share(gross, Decimal(fraction)) == share


@pytest.mark.usefixtures("demo_rules")
class TestBeforeDelivery:
    def test_a_full_refund_cancels_undelivered_actions(self, services, post_event, django_capture_on_commit_callbacks):
        with django_capture_on_commit_callbacks(execute=False):
            original = voucher(services, post_event).json()
            response = refund(services, post_event)
        assert response.status_code == 201, response.json()
        body = response.json()
        assert body["reverses_external_id"] == "purchase-1"
        assert body["reversal_fraction"] is None
        assert body["reward_actions"] == []  # nothing was delivered: nothing to take back by a reversal action
        for action in actions_of(original["id"]).values():
            assert action.status == RewardAction.Status.CANCELLED
            assert action.amount == 0
            assert action.reversed_amount > 0
            assert action.cancel_reason == f"reversed by {body['id']}"
        event = EconomicEvent.objects.get(pk=body["id"])
        assert event.reverses_id is not None and str(event.reverses_id) == original["id"]

    def test_a_partial_refund_reduces_them(self, services, post_event, django_capture_on_commit_callbacks):
        with django_capture_on_commit_callbacks(execute=False):
            original = voucher(services, post_event).json()
            assert refund(services, post_event, reversal_fraction=0.25).status_code == 201
        by_target = actions_of(original["id"])
        # amounts 100 (g2a), 50 and 10 points: a quarter of each, floored
        assert (by_target["partner"].amount, by_target["partner"].reversed_amount) == (75, 25)
        assert (by_target["promoter"].amount, by_target["promoter"].reversed_amount) == (38, 12)
        assert (by_target["buyer"].amount, by_target["buyer"].reversed_amount) == (8, 2)
        assert all(a.status == RewardAction.Status.PENDING for a in by_target.values())

    def test_several_partial_refunds_never_take_back_more_than_the_original(
        self, services, post_event, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks(execute=False):
            original = voucher(services, post_event).json()
            for n in range(5):
                assert refund(services, post_event, external_id=f"r{n}", reversal_fraction=0.3).status_code == 201
        for action in actions_of(original["id"]).values():
            gross = action.amount + action.reversed_amount
            assert action.reversed_amount <= gross
        partner = actions_of(original["id"])["partner"]
        assert partner.reversed_amount == 100 and partner.status == RewardAction.Status.CANCELLED


@pytest.mark.usefixtures("demo_rules")
class TestAfterDelivery:
    def test_completed_actions_get_reversal_actions(self, services, post_event, django_capture_on_commit_callbacks):
        with django_capture_on_commit_callbacks(execute=False):
            original = voucher(services, post_event).json()
            mark_completed(original["id"])
            body = refund(services, post_event, reversal_fraction=0.5).json()
        reversals = {a["target_user_id"]: a for a in body["reward_actions"]}
        originals = actions_of(original["id"])
        assert {t: (a["amount"], a["reward_type"], a["status"]) for t, a in reversals.items()} == {
            "partner": (50, "g2a_offchain", "pending"),
            "promoter": (25, "points", "pending"),
            "buyer": (5, "points", "pending"),
        }
        for target, reversal in reversals.items():
            assert reversal["reverses"] == str(originals[target].pk)
            assert originals[target].reversed_amount == reversal["amount"]
            assert originals[target].amount in (100, 50, 10)  # what was paid stays as it was
            assert originals[target].status == RewardAction.Status.COMPLETED

    def test_the_reversal_actions_are_listed_by_the_action_they_reverse(
        self, services, post_event, django_capture_on_commit_callbacks
    ):
        with django_capture_on_commit_callbacks(execute=False):
            original = voucher(services, post_event).json()
            mark_completed(original["id"])
            body = refund(services, post_event).json()
        promoter = actions_of(original["id"])["promoter"]
        listed = services["voucher_service"].get(f"/api/v1/reward-actions?reverses={promoter.pk}").json()["results"]
        assert [a["id"] for a in listed] == [
            a["id"] for a in body["reward_actions"] if a["reverses"] == str(promoter.pk)
        ]
        assert listed[0]["reversed_amount"] == 0 and listed[0]["shortfall"] is None

    def test_an_action_already_attempted_is_not_reduced_in_place(
        self, services, post_event, django_capture_on_commit_callbacks
    ):
        # A retried action may have reached its channel already: its amount must not change under it.
        with django_capture_on_commit_callbacks(execute=False):
            original = voucher(services, post_event).json()
            RewardAction.objects.filter(event_id=original["id"]).update(attempts=1)
            body = refund(services, post_event).json()
        assert len(body["reward_actions"]) == 3
        assert all(a.amount > 0 and a.status == "pending" for a in actions_of(original["id"]).values())

    def test_a_refunded_badge_can_be_earned_again(self, services, post_event, django_capture_on_commit_callbacks):
        quest = {
            "event_type": "quest.completed",
            "source_service": "quest_service",
            "actor_user_id": "hero",
            "context": {"base_reward_points": 10, "total_quests_completed": 10},
        }
        api = services["quest_service"]
        with django_capture_on_commit_callbacks(execute=False):
            first = post_event(api, external_id="q1", **quest).json()
            assert [a["reward_type"] for a in first["reward_actions"]].count("nft") == 1
            mark_completed(first["id"])
            again = post_event(api, external_id="q2", **quest).json()
            assert [a["reward_type"] for a in again["reward_actions"]].count("nft") == 0  # once per target
            refund_body = {**quest, "event_type": "quest.revoked", "reverses_external_id": "q1"}
            revoked = post_event(api, external_id="q1-revoked", **refund_body).json()
            assert [a["reward_type"] for a in revoked["reward_actions"]].count("nft") == 1  # the revoke call
            third = post_event(api, external_id="q3", **quest).json()
        assert [a["reward_type"] for a in third["reward_actions"]].count("nft") == 1
        assert RewardGrant.objects.get(target_user_id="hero").count == 1


@pytest.mark.usefixtures("demo_rules")
class TestRefusals:
    def test_an_unknown_original_is_refused_and_stores_nothing(self, services, post_event):
        response = refund(services, post_event, reverses="no-such-purchase")
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "original_event_not_found"
        assert not EconomicEvent.objects.exists()
        voucher(services, post_event, external_id="no-such-purchase")
        assert refund(services, post_event, reverses="no-such-purchase").status_code == 201  # id not used up

    def test_an_original_of_another_source_is_not_found(self, services, post_event):
        post_event(
            services["quest_service"], external_id="purchase-1", **{**VOUCHER, "source_service": "quest_service"}
        )
        response = refund(services, post_event)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "original_event_not_found"

    def test_a_reversal_of_a_reversal_is_not_reversible(self, services, post_event):
        voucher(services, post_event)
        refund(services, post_event)
        count = EconomicEvent.objects.count()
        response = refund(services, post_event, external_id="refund-of-refund", reverses="refund-1")
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "not_reversible"
        assert EconomicEvent.objects.count() == count

    @pytest.mark.parametrize("fraction", [0, -0.5, 1.5, "0.5", True, 1e-11])
    def test_a_bad_fraction_is_a_validation_error(self, services, post_event, fraction):
        voucher(services, post_event)
        response = refund(services, post_event, reversal_fraction=fraction)
        assert response.status_code == 400
        assert "reversal_fraction" in response.json()["error"]["details"]
        assert EconomicEvent.objects.count() == 1

    def test_a_fraction_is_rounded_down_to_ten_decimal_places(self, services, post_event):
        voucher(services, post_event)
        body = refund(services, post_event, reversal_fraction=1 / 3).json()
        assert body["reversal_fraction"] == 0.3333333333
        assert EconomicEvent.objects.get(pk=body["id"]).reversal_fraction == Decimal("0.3333333333")

    def test_a_fraction_without_an_original_is_a_validation_error(self, services, post_event):
        response = voucher(services, post_event, reversal_fraction=0.5)
        assert response.status_code == 400
        assert not EconomicEvent.objects.exists()

    def test_a_replay_answers_the_stored_reversal_and_another_fraction_conflicts(self, services, post_event):
        voucher(services, post_event)
        first = refund(services, post_event, reversal_fraction=0.5)
        replay = refund(services, post_event, reversal_fraction=0.5)
        assert (first.status_code, replay.status_code) == (201, 200)
        assert replay.json()["id"] == first.json()["id"]
        assert refund(services, post_event, reversal_fraction=0.25).status_code == 409

    @pytest.mark.parametrize("first, again", [({}, {"reversal_fraction": 1}), ({"reversal_fraction": 1}, {})])
    def test_the_default_fraction_written_out_or_left_out_is_the_same_refund(self, services, post_event, first, again):
        voucher(services, post_event)
        stored = refund(services, post_event, **first)
        replay = refund(services, post_event, **again)
        assert (stored.status_code, replay.status_code) == (201, 200), replay.json()
        assert replay.json()["id"] == stored.json()["id"]
        assert refund(services, post_event, reversal_fraction=0.5).status_code == 409

    def test_a_refund_stored_with_the_default_fraction_in_its_fingerprint_is_still_replayed(self, services, post_event):
        """Before the default was left out of the fingerprint, an explicit 1 was kept in it."""
        from connect.services import payload_hash

        voucher(services, post_event)
        stored = refund(services, post_event, reversal_fraction=1)
        event = EconomicEvent.objects.get(pk=stored.json()["id"])
        data = {**VOUCHER, "event_type": "voucher.refunded", "context": {}, "occurred_at": None,
                "primary_subject_user_id": None, "reverses_external_id": "purchase-1",
                "reversal_fraction": Decimal("1.0000000000")}  # fmt: skip
        assert event.payload_hash == payload_hash(data)
        EconomicEvent.objects.filter(pk=event.pk).update(payload_hash=payload_hash(data, default_fraction_written=True))

        assert refund(services, post_event, reversal_fraction=1).status_code == 200

    def test_events_without_reversal_fields_keep_their_fingerprint(self):
        from connect.services import payload_hash

        body = {k: VOUCHER.get(k) for k in ("event_type", "actor_user_id", "context")}
        assert payload_hash(body) == payload_hash({**body, "reverses_external_id": None, "reversal_fraction": None})


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("demo_rules")
def test_parallel_partial_refunds_never_take_back_more_than_the_original(services, post_event):
    voucher(services, post_event)
    barrier = threading.Barrier(6)

    def send(n):
        try:
            barrier.wait()
            refund(services, post_event, external_id=f"parallel-{n}", reversal_fraction=0.3)
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert EconomicEvent.objects.filter(reverses__isnull=False).count() == 6
    originals = {a.target_user_id: a for a in RewardAction.objects.filter(reverses__isnull=True)}
    assert {t: gross_amount(a) for t, a in originals.items()} == {"partner": 100, "promoter": 50, "buyer": 10}
    for action in originals.values():
        # Taken back in full (6 × 0.3 ≥ 1), and not a point more: by reductions or by reversal actions.
        assert action.reversed_amount == gross_amount(action)
        carried = sum(r.amount for r in RewardAction.objects.filter(reverses=action))
        assert (gross_amount(action) - action.amount) + carried == action.reversed_amount
