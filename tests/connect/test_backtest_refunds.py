"""Backtest (SPEC §15) replays refunds' count-backs (SPEC §12): a reward a refund made available again
(a once-only badge, a periodic cap, a budget) is paid again in the replay, as it was in production."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from connect.backtest import backtest_run, report_lines
from connect.models import EconomicEvent, RewardAction
from connect.services import event_ingest
from rules.services import rules_export

pytestmark = pytest.mark.django_db


@pytest.fixture
def capped(make_rule):
    """A once-only reward per user, a reward capped at one a month, and a budget of 100 points."""
    make_rule("once", "order.paid", [
        {"target": "actor", "reward_type": "points", "amount": "10", "max_per_target": 1},
        {"target": "actor", "reward_type": "points", "amount": "1", "max_per_target_per_period": 1, "period": "month"},
    ])  # fmt: skip
    make_rule("budgeted", "order.big", [{"target": "actor", "reward_type": "points", "amount": "context.amount"}],
              budget=100, budget_policy="partial")  # fmt: skip


def _post(external_id, event_type, actor, **fields):
    data = {"external_id": external_id, "event_type": event_type, "actor_user_id": actor,
            "primary_subject_user_id": None, "context": fields.pop("context", {}), **fields}  # fmt: skip
    return event_ingest(client_name="shop_service", data=data)


def _refund(external_id, original, fraction=None):
    extra = {"reversal_fraction": Decimal(fraction)} if fraction is not None else {}
    return _post(external_id, "order.refunded", "anyone", reverses_external_id=original, **extra)


def _report(since):
    return backtest_run(payload=rules_export(), since=since, until=timezone.now() + timedelta(seconds=1))


def _paid(external_id):
    return sorted(RewardAction.objects.filter(event__external_id=external_id).values_list("amount", flat=True))


def test_a_refund_inside_the_period_lets_the_replay_pay_a_capped_reward_again(capped):
    since = timezone.now()
    _post("o1", "order.paid", "ann")
    _refund("o1-refund", "o1")
    _post("o2", "order.paid", "ann")
    assert _paid("o2") == [1, 10]  # production paid both capped rewards again

    report = _report(since)

    assert report["events_differing"] == 0, report["differences"]
    assert report["reversals_replayed"] == 1
    assert report["actions"] == {"backtest": 4, "production": 4}
    assert "Refunds: 1 reversal event(s) counted back in the replay" in "\n".join(report_lines(report))


def test_a_partial_refund_gives_its_share_back_to_the_budget(capped):
    since = timezone.now()
    _post("b1", "order.big", "ann", context={"amount": 100})
    _refund("b1-refund", "b1", "0.3")
    _post("b2", "order.big", "bob", context={"amount": 60})
    assert _paid("b2") == [30]  # the 30 points the refund gave back

    report = _report(since)

    assert report["events_differing"] == 0, report["differences"]
    budget = report["budgets"][0]
    assert budget["rule"] == "budgeted" and list(budget["used"].values()) == [100]


def test_a_partial_refund_does_not_count_the_reward_out_of_its_caps(capped):
    since = timezone.now()
    _post("o1", "order.paid", "ann")
    _refund("o1-refund", "o1", "0.5")  # 5 of 10 and 0 of 1 taken back: something is left of both
    _post("o2", "order.paid", "ann")
    assert _paid("o2") == []

    report = _report(since)

    assert report["events_differing"] == 0, report["differences"]


def test_an_original_before_the_period_refunded_inside_it_counts_back_production_s_actions(capped):
    _post("o1", "order.paid", "ann")
    _post("b1", "order.big", "ann", context={"amount": 100})
    since = timezone.now()
    _refund("o1-refund", "o1")
    _refund("b1-refund-1", "b1", "0.5")
    _refund("b1-refund-2", "b1", "0.8")  # 80 of 100, but only the 50 left: 50 more
    _post("o2", "order.paid", "ann")
    _post("b2", "order.big", "bob", context={"amount": 150})
    assert _paid("o2") == [1, 10] and _paid("b2") == [100]

    report = _report(since)

    assert report["events_differing"] == 0, report["differences"]
    assert report["reversals_replayed"] == 3


def test_refunds_before_the_period_are_taken_out_of_the_seeded_counters(capped):
    _post("o1", "order.paid", "ann")
    _refund("o1-refund", "o1")
    _post("b1", "order.big", "ann", context={"amount": 100})
    _refund("b1-refund", "b1", "0.4")
    since = timezone.now()
    _post("o2", "order.paid", "ann")
    _post("b2", "order.big", "bob", context={"amount": 70})
    assert _paid("o2") == [1, 10] and _paid("b2") == [40]

    report = _report(since)

    assert report["events_differing"] == 0, report["differences"]
    assert report["reversals_replayed"] == 0


def test_a_staff_cancelled_action_of_an_earlier_original_is_not_counted_back(capped):
    """A reversal skips a cancelled action, so production's once-only grant stays counted: ann's next
    order is capped in production, and must be in the replay too."""
    _post("o1", "order.paid", "ann")
    RewardAction.objects.filter(event__external_id="o1").update(
        status=RewardAction.Status.CANCELLED, cancel_reason="duplicate order"
    )
    since = timezone.now()
    _refund("o1-refund", "o1")
    _post("o2", "order.paid", "ann")
    assert _paid("o2") == []

    report = _report(since)

    assert report["events_differing"] == 0, report["differences"]
    assert report["reversals_replayed"] == 1


def test_a_reversal_whose_own_rules_fail_counts_nothing_back(capped, make_rule):
    """Production rolls the refund back with the failed event (SPEC §5: a failed event has no actions)."""
    make_rule("broken", "order.refunded", [{"target": "actor", "reward_type": "points", "amount": "context.nope"}])
    since = timezone.now()
    _post("o1", "order.paid", "ann")
    assert _refund("o1-refund", "o1").event.status == "failed"
    _post("o2", "order.paid", "ann")
    assert _paid("o2") == []

    report = _report(since)

    assert report["events_differing"] == 0, report["differences"]
    assert report["events_failed"] == 1 and report["reversals_replayed"] == 0


def test_rules_that_pay_an_original_differently_count_back_what_the_replay_paid(capped):
    """The replay refunds what its own rules paid: with the cap raised to two, the refund of one of
    two rewards leaves room for exactly one more."""
    since = timezone.now()
    _post("o1", "order.paid", "ann")
    _post("o2", "order.paid", "ann")
    _refund("o2-refund", "o2")
    _post("o3", "order.paid", "ann")
    _post("o4", "order.paid", "ann")
    payload = rules_export(codes=["once"])
    payload["rules"][0]["rewards"][0]["max_per_target"] = 2

    report = backtest_run(payload=payload, since=since, until=timezone.now() + timedelta(seconds=1))

    once = {row["rule"]: row for row in report["rules"]}["once"]
    # Production: o1 paid 10 and 1, the rest capped (the refund of o2 took back nothing).
    # Replay: o1 paid 10 and 1, o2 paid 10; its refund gave that back, so o3 is paid 10 and o4 capped.
    assert (once["actions"], once["production"]["actions"]) == (4, 2)
    differing = {EconomicEvent.objects.get(pk=d["event_id"]).external_id for d in report["differences"]}
    assert differing == {"o2", "o3"}
