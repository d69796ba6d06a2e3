"""Budgets and periodic caps under concurrency (real threads, PostgreSQL, one connection each)."""

import threading
from datetime import UTC, datetime

import pytest
from django.db import connections

from connect.models import RewardAction
from connect.services import event_ingest
from rules.models import BudgetCounter

pytestmark = pytest.mark.django_db(transaction=True)

AT = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
RACERS = 20


def _race(events: list[dict]) -> list:
    """Ingest every event in its own thread, all released at once; returns the errors."""
    start = threading.Barrier(len(events), timeout=30)
    errors: list = []

    def run(data):
        try:
            start.wait()
            event_ingest(client_name="shop", data=data)
        except Exception as exc:  # reported by the assertion on errors
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(data,), daemon=True) for data in events]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors


def _event(n: int, actor: str, **context) -> dict:
    return {"external_id": f"race-{n}", "event_type": "shop.bought", "actor_user_id": actor,
            "primary_subject_user_id": None, "context": context, "occurred_at": AT}  # fmt: skip


def test_twenty_events_racing_for_the_last_10_points_pay_exactly_10(make_rule):
    rule = make_rule("campaign", "shop.bought", [{"target": "actor", "reward_type": "points", "amount": "3"}],
                     budget=100)  # fmt: skip
    BudgetCounter.objects.create(rule=rule, period_key="all", used=90)

    errors = _race([_event(n, f"user-{n}") for n in range(RACERS)])

    assert errors == []
    amounts = sorted(RewardAction.objects.filter(rule=rule).values_list("amount", flat=True))
    assert sum(amounts) == 10 and amounts == [1, 3, 3, 3]
    assert BudgetCounter.objects.get(rule=rule).used == 100


def test_a_daily_cap_of_one_holds_when_twenty_events_of_one_target_race(make_rule):
    rule = make_rule("daily", "shop.bought", [{"target": "actor", "reward_type": "points", "amount": "5",
                                               "max_per_target_per_period": 1, "period": "day"}])  # fmt: skip

    errors = _race([_event(n, "same-user") for n in range(RACERS)])

    assert errors == []
    assert RewardAction.objects.filter(rule=rule).count() == 1


def test_budget_period_and_life_caps_of_crossing_targets_never_deadlock(make_rule):
    """Each event locks a budget row, two lines' life-cap rows and their period rows, its targets
    crossing those of the others (a → b, b → a): locks taken in one order never wait in a cycle."""
    rule = make_rule(
        "crossing",
        "shop.bought",
        [
            {"target": "actor", "reward_type": "points", "amount": "1", "max_per_target": 100,
             "max_per_target_per_period": 100, "period": "week"},
            {"target": "context.friend", "reward_type": "points", "amount": "1", "max_per_target": 100,
             "max_per_target_per_period": 100, "period": "day"},
        ],
        budget=1000,
        budget_period="month",
    )  # fmt: skip
    pairs = [("a", "b"), ("b", "a")] * (RACERS // 2)

    errors = _race([_event(n, actor, friend=friend) for n, (actor, friend) in enumerate(pairs)])

    assert errors == []
    assert RewardAction.objects.filter(rule=rule).count() == 2 * RACERS
    assert BudgetCounter.objects.get(rule=rule).used == 2 * RACERS
