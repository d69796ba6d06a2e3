"""Budgets and periodic caps (SPEC §14) at the service and HTTP levels, and their refunds."""

from datetime import UTC, datetime

import pytest

from connect.models import RewardAction
from connect.services import event_ingest
from rules.budgets import budget_refund, budget_status, cap_refund, period_key
from rules.models import BudgetCounter, PeriodGrant

pytestmark = pytest.mark.django_db

MONDAY = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _ingest(n: int, *, amount=10, target="alice", occurred_at=MONDAY, event_type="shop.bought", **context):
    data = {
        "external_id": f"e-{n}",
        "event_type": event_type,
        "actor_user_id": target,
        "primary_subject_user_id": None,
        "context": {"amount": amount, **context},
        "occurred_at": occurred_at,
    }
    return event_ingest(client_name="shop", data=data)


def _paid(result) -> list[int]:
    return [action.amount for action in result.actions]


def _line_results(result) -> list[str]:
    return [line["result"] for rule in result.event.trace["rules"] for line in rule["lines"]]


@pytest.fixture
def budgeted(make_rule):
    def make(budget, policy="partial", period=None, rewards=None):
        rewards = rewards or [{"target": "actor", "reward_type": "points", "amount": "context.amount"}]
        return make_rule("campaign", "shop.bought", rewards, budget=budget, budget_period=period, budget_policy=policy)

    return make


def test_partial_budget_pays_what_is_left_then_nothing(budgeted):
    rule = budgeted(25)

    results = [_ingest(n) for n in range(4)]

    assert [_paid(r) for r in results] == [[10], [10], [5], []]
    assert [_line_results(r) for r in results] == [["fired"], ["fired"], ["budget_partial:5"], ["budget_exhausted"]]
    assert results[3].event.status == "ignored"
    assert budget_status(rule=rule).used == 25 and budget_status(rule=rule).left == 0


def test_skip_budget_pays_nothing_for_the_line_that_crosses_it_and_smaller_ones_still_fit(budgeted):
    budgeted(25, policy="skip")

    results = [_ingest(1), _ingest(2), _ingest(3), _ingest(4, amount=5), _ingest(5, amount=1)]

    assert [_paid(r) for r in results] == [[10], [10], [], [5], []]
    assert _line_results(results[2]) == ["budget_exhausted"]


def test_lines_are_charged_in_order_and_nft_lines_count_nothing(budgeted):
    rule = budgeted(
        15,
        rewards=[
            {"target": "actor", "reward_type": "nft", "params": {"badge_type": "b"}},
            {"target": "actor", "reward_type": "points", "amount": "10"},
            {"target": "context.friend", "reward_type": "points", "amount": "10"},
        ],
    )

    result = _ingest(1, friend="bob")

    assert [(a.reward_type, a.target_user_id, a.amount) for a in result.actions] == [
        ("nft", "alice", 1),
        ("points", "alice", 10),
        ("points", "bob", 5),
    ]
    assert _line_results(result) == ["fired", "fired", "budget_partial:5"]
    assert BudgetCounter.objects.get(rule=rule, period_key="all").used == 15
    assert [a.budget_period_key for a in RewardAction.objects.order_by("amount")] == ["", "all", "all"]


def test_a_daily_budget_renews_at_midnight_of_the_program_time_zone(budgeted, settings):
    settings.PROGRAM_TIME_ZONE = "Europe/Berlin"
    budgeted(10, period="day")
    late = datetime(2026, 12, 7, 22, 59, tzinfo=UTC)  # 23:59 in Berlin
    next_day = datetime(2026, 12, 7, 23, 0, tzinfo=UTC)  # 00:00 in Berlin, still the 7th in UTC

    assert _paid(_ingest(1, occurred_at=late)) == [10]
    assert _paid(_ingest(2, occurred_at=late)) == []
    assert _paid(_ingest(3, occurred_at=next_day)) == [10]
    assert set(BudgetCounter.objects.values_list("period_key", flat=True)) == {"day:2026-12-07", "day:2026-12-08"}


def test_the_period_is_that_of_received_at_when_the_event_has_no_occurred_at(budgeted):
    budgeted(10, period="month")

    result = _ingest(1, occurred_at=None)

    assert result.actions[0].budget_period_key == period_key("month", result.event.received_at)


@pytest.fixture
def weekly_cap(make_rule):
    return make_rule(
        "weekly_bonus",
        "shop.bought",
        [{"target": "actor", "reward_type": "points", "amount": "5", "max_per_target_per_period": 1, "period": "week"}],
    )


@pytest.mark.usefixtures("weekly_cap")
def test_a_weekly_cap_starts_monday_00_00_local_in_a_non_utc_zone(settings):
    settings.PROGRAM_TIME_ZONE = "Asia/Tokyo"  # UTC+9
    sunday_night = datetime(2026, 12, 6, 14, 59, tzinfo=UTC)  # Sunday 23:59 Tokyo
    monday_start = datetime(2026, 12, 6, 15, 0, tzinfo=UTC)  # Monday 00:00 Tokyo, Sunday in UTC
    tuesday = datetime(2026, 12, 8, 3, 0, tzinfo=UTC)

    first, second, third = (_ingest(n, occurred_at=at) for n, at in enumerate((sunday_night, monday_start, tuesday)))

    assert (_paid(first), _paid(second), _paid(third)) == ([5], [5], [])
    assert _line_results(third) == ["period_cap_reached"]
    assert [a.cap_period_key for a in (first.actions + second.actions)] == ["week:2026-11-30", "week:2026-12-07"]


@pytest.mark.usefixtures("weekly_cap")
def test_the_same_moments_fall_in_one_week_in_utc():
    sunday_night = datetime(2026, 12, 6, 14, 59, tzinfo=UTC)
    later_sunday = datetime(2026, 12, 6, 15, 0, tzinfo=UTC)

    assert _paid(_ingest(1, occurred_at=sunday_night)) == [5]
    assert _line_results(_ingest(2, occurred_at=later_sunday)) == ["period_cap_reached"]
    assert _paid(_ingest(3, occurred_at=later_sunday, target="bob")) == [5]  # per target


def test_budget_refund_counts_the_reversed_points_back(budgeted):
    rule = budgeted(20)
    first = _ingest(1)
    _ingest(2)
    assert _paid(_ingest(3)) == []

    action = first.actions[0]
    budget_refund(rule_id=action.rule_id, period_key=action.budget_period_key, amount=4)

    assert budget_status(rule=rule).used == 16
    assert _paid(_ingest(4)) == [4]
    budget_refund(rule_id=action.rule_id, period_key=action.budget_period_key, amount=1000)
    assert budget_status(rule=rule).used == 0  # never below zero


def test_cap_refund_lets_the_target_earn_it_again_that_period(weekly_cap):
    first = _ingest(1)
    assert _paid(_ingest(2)) == []

    action = first.actions[0]
    cap_refund(reward_line_id=action.reward_line_id, target_user_id="alice", period_key=action.cap_period_key)

    assert _paid(_ingest(3)) == [5]
    assert PeriodGrant.objects.get(target_user_id="alice").count == 1
    cap_refund(reward_line_id=action.reward_line_id, target_user_id="nobody", period_key=action.cap_period_key)
    assert not PeriodGrant.objects.filter(target_user_id="nobody").exists()


def test_over_http_a_budgeted_rule_pays_partially_and_the_trace_says_so(budgeted, api_for):
    budgeted(15)
    api = api_for("shop", ["events:write", "events:read"])
    bodies = [
        api.post(
            "/api/v1/events",
            {"external_id": f"h-{n}", "event_type": "shop.bought", "source_service": "shop",
             "actor_user_id": "alice", "context": {"amount": 10}},
            format="json",
        )
        for n in range(3)
    ]  # fmt: skip

    assert [b.status_code for b in bodies] == [201, 201, 201]
    assert [[a["amount"] for a in b.json()["reward_actions"]] for b in bodies] == [[10], [5], []]
    trace = api.get(f"/api/v1/events/{bodies[1].json()['id']}/trace").json()
    assert trace["rules"][0]["lines"][0]["result"] == "budget_partial:5"


def test_a_whole_reversal_counts_an_action_out_of_its_budget_and_every_cap(make_rule):
    from connect.counters import reward_action_counters_refund

    make_rule("badge_once", "shop.bought", [
        {"target": "actor", "reward_type": "points", "amount": "10", "max_per_target": 1,
         "max_per_target_per_period": 1, "period": "day"},
    ], budget=10)  # fmt: skip
    [action] = _ingest(1).actions
    assert _line_results(_ingest(2)) == ["cap_reached"]

    reward_action_counters_refund(action=action, amount=4, whole=False)
    assert _line_results(_ingest(3)) == ["cap_reached"]  # a partial reversal keeps the action counted

    reward_action_counters_refund(action=action, amount=6, whole=True)
    assert _paid(_ingest(4)) == [10] and _line_results(_ingest(5)) == ["cap_reached"]


def test_rules_need_counters_only_with_a_budget_or_a_cap(make_rule):
    from rules.budgets import rules_need_counters

    plain = make_rule("plain", "a.b", [{"target": "actor", "reward_type": "points", "amount": "1"}])
    budget = make_rule("budget", "a.b", [{"target": "actor", "reward_type": "points", "amount": "1"}], budget=5)
    capped = make_rule("capped", "a.b", [{"target": "actor", "reward_type": "points", "amount": "1",
                                          "max_per_target_per_period": 1, "period": "day"}])  # fmt: skip

    assert not rules_need_counters([plain])
    assert rules_need_counters([plain, budget]) and rules_need_counters([capped])


def test_over_http_a_skip_budget_and_a_daily_cap_refuse_with_their_reasons(make_rule, api_for):
    make_rule("skipper", "shop.bought", [{"target": "actor", "reward_type": "points", "amount": "context.amount"}],
              budget=15, budget_policy="skip")  # fmt: skip
    make_rule("daily", "shop.bought", [{"target": "actor", "reward_type": "nft", "params": {"badge_type": "d"},
                                        "max_per_target_per_period": 1, "period": "day"}])  # fmt: skip
    api = api_for("shop", ["events:write", "events:read"])

    def post(n):
        body = {"external_id": f"s-{n}", "event_type": "shop.bought", "source_service": "shop",
                "actor_user_id": "alice", "context": {"amount": 10}, "occurred_at": "2026-12-07T10:00:00Z"}  # fmt: skip
        response = api.post("/api/v1/events", body, format="json")
        assert response.status_code == 201
        trace = api.get(f"/api/v1/events/{response.json()['id']}/trace").json()
        actions = sorted((a["reward_type"], a["amount"]) for a in response.json()["reward_actions"])
        return actions, {rule["rule"]: rule["lines"][0]["result"] for rule in trace["rules"]}

    assert post(1) == ([("nft", 1), ("points", 10)], {"skipper": "fired", "daily": "fired"})
    assert post(2) == ([], {"skipper": "budget_exhausted", "daily": "period_cap_reached"})
