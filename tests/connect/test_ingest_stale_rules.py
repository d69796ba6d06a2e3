"""An event planned with a rule or reward line another process has just deleted.

Each process caches the active rules for RULES_CACHE_SECONDS, and an edit clears only the cache of
the process that makes it. Until another process's entry expires, it can plan actions for a rule or
line that no longer exists; their foreign keys refuse them. Ingest then plans again with fresh
rules instead of answering 500. Here the "other process" is this one with its cache clear silenced.
"""

import pytest

from connect.models import EconomicEvent, RewardAction
from connect.services import event_ingest
from rules import selectors
from rules.selectors import rules_cache_clear, rules_for_event_type

pytestmark = pytest.mark.django_db(transaction=True)  # autocommit: the one-statement path is taken


@pytest.fixture
def cached_rules(settings):
    settings.RULES_CACHE_SECONDS = 60
    rules_cache_clear()
    yield
    rules_cache_clear()


def _task(external_id: str) -> dict:
    return {"external_id": external_id, "event_type": "task.done", "actor_user_id": "u-1", "context": {}}


def _deleted_elsewhere(monkeypatch, instance) -> None:
    """Delete as another process would: this process's rule cache is not told."""
    with monkeypatch.context() as patch:
        patch.setattr(selectors, "rules_cache_clear", lambda: None)
        instance.delete()


# max_per_target forces the transactional path; without it the event goes in one statement.
@pytest.mark.parametrize("max_per_target", [None, 3], ids=["one statement", "transaction"])
def test_a_line_deleted_elsewhere_is_not_planned_and_the_event_is_stored(
    monkeypatch, make_rule, cached_rules, max_per_target
):
    rule = make_rule(
        "task_rewards", "task.done",
        [{"target": "actor", "reward_type": "points", "amount": "10", "max_per_target": max_per_target},
         {"target": "actor", "reward_type": "points", "amount": "5", "max_per_target": max_per_target}],
    )  # fmt: skip
    assert len(event_ingest(client_name="svc", data=_task("t-1")).actions) == 2  # the rule is now cached

    _deleted_elsewhere(monkeypatch, rule.rewards.get(position=1))
    assert len(rules_for_event_type("task.done")[0].rewards.all()) == 2  # still the stale copy

    result = event_ingest(client_name="svc", data=_task("t-2"))

    assert not result.replayed and result.event.status == EconomicEvent.Status.PROCESSED
    stored = RewardAction.objects.filter(event__external_id="t-2")
    assert [a.amount for a in stored] == [5]
    assert len(rules_for_event_type("task.done")[0].rewards.all()) == 1  # planned again with fresh rules


def test_a_rule_deleted_elsewhere_leaves_the_event_ignored(monkeypatch, make_rule, cached_rules):
    rule = make_rule("task_rewards", "task.done", [{"target": "actor", "reward_type": "points", "amount": "10"}])
    rules_for_event_type("task.done")  # cached, and never used: a rule with actions cannot be deleted

    _deleted_elsewhere(monkeypatch, rule)
    result = event_ingest(client_name="svc", data=_task("t-1"))

    assert result.event.status == EconomicEvent.Status.IGNORED
    assert EconomicEvent.objects.filter(external_id="t-1").count() == 1
    assert not RewardAction.objects.exists()
