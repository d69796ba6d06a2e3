"""The per-process cache of rules_for_event_type: hits run no SQL, edits clear it, entries expire and
are then checked against their stamp (one query) before being read again."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from rules import selectors
from rules.models import RewardLine, Rule
from rules.selectors import rules_for_event_type
from rules.services import rule_save_from_dict

EVENT_TYPE = "quest.completed"


@pytest.fixture(autouse=True)
def cache_on(settings):
    settings.RULES_CACHE_SECONDS = 5
    selectors.rules_cache_clear()
    yield
    selectors.rules_cache_clear()


@pytest.fixture
def clock(monkeypatch):
    """A monotonic clock the test moves by hand."""
    now = [1000.0]
    monkeypatch.setattr(selectors.time, "monotonic", lambda: now[0])
    return now


def save_rule(code="quest_rule", *, amount="10", lines=1, priority=100) -> Rule:
    rule, _ = rule_save_from_dict(
        data={
            "code": code,
            "name": code,
            "event_type": EVENT_TYPE,
            "priority": priority,
            "rewards": [{"target": "actor", "reward_type": "points", "amount": amount} for _ in range(lines)],
        }
    )
    return rule


def load() -> tuple[list[Rule], int]:
    """The rules of EVENT_TYPE with their line amounts read, and how many queries that took."""
    with CaptureQueriesContext(connection) as captured:
        rules = rules_for_event_type(EVENT_TYPE)
        for rule in rules:
            list(rule.rewards.all())
    return rules, len(captured.captured_queries)


def summary(rules) -> list[tuple[str, list[str]]]:
    return [(rule.code, [line.amount for line in rule.rewards.all()]) for rule in rules]


@pytest.mark.django_db
def test_a_second_call_within_the_ttl_runs_no_sql():
    save_rule("a_rule", lines=2)
    save_rule("b_rule", priority=200)

    first, first_queries = load()
    second, second_queries = load()

    assert first_queries == 2
    assert second_queries == 0
    assert summary(second) == summary(first) == [("a_rule", ["10", "10"]), ("b_rule", ["10"])]


@pytest.mark.django_db
def test_the_cache_is_per_event_type():
    save_rule()
    load()

    with CaptureQueriesContext(connection) as captured:
        assert rules_for_event_type("other.type") == []
    assert len(captured.captured_queries) == 1


@pytest.mark.django_db
def test_deactivating_a_rule_is_seen_at_once():
    rule = save_rule()
    assert [r.code for r in load()[0]] == ["quest_rule"]

    rule.is_active = False
    rule.save()

    rules, queries = load()
    assert rules == []
    assert queries == 1


@pytest.mark.django_db
def test_changing_a_line_amount_is_seen_at_once():
    rule = save_rule()
    load()

    line = rule.rewards.get()
    line.amount = "25"
    line.save()

    rules, queries = load()
    assert summary(rules) == [("quest_rule", ["25"])]
    assert queries == 2


@pytest.mark.django_db
def test_deleting_a_line_is_seen_at_once():
    rule = save_rule(lines=2)
    assert summary(load()[0]) == [("quest_rule", ["10", "10"])]

    rule.rewards.order_by("position", "id").last().delete()

    assert summary(load()[0]) == [("quest_rule", ["10"])]


@pytest.mark.django_db
def test_deleting_a_rule_is_seen_at_once():
    rule = save_rule()
    save_rule("other_rule", priority=200)
    assert [r.code for r in load()[0]] == ["quest_rule", "other_rule"]

    rule.delete()

    assert [r.code for r in load()[0]] == ["other_rule"]


@pytest.mark.django_db
def test_a_new_rule_is_seen_at_once():
    save_rule("a_rule")
    load()

    save_rule("b_rule", priority=200)

    assert [r.code for r in load()[0]] == ["a_rule", "b_rule"]


@pytest.mark.django_db
def test_an_edit_without_signals_is_seen_only_after_the_ttl(clock):
    rule = save_rule()
    load()

    # A queryset update sends no post_save, so only expiry can bring it in.
    Rule.objects.filter(pk=rule.pk).update(is_active=False)
    RewardLine.objects.filter(rule=rule).update(amount="99")

    clock[0] += 4.9
    rules, queries = load()
    assert queries == 0
    assert summary(rules) == [("quest_rule", ["10"])]

    clock[0] += 0.1
    rules, queries = load()
    assert queries == 2  # the stamp differs, so the rules are read again (none are active)
    assert rules == []


@pytest.mark.django_db
def test_an_expired_entry_whose_rules_did_not_change_is_kept_with_one_query(clock):
    save_rule("a_rule", lines=2)
    save_rule("b_rule", priority=200)
    first, _ = load()

    clock[0] += 5
    with CaptureQueriesContext(connection) as captured:
        again = rules_for_event_type(EVENT_TYPE)
    assert len(captured.captured_queries) == 1
    assert [a is b for a, b in zip(again, first, strict=True)] == [True, True]  # not read again
    clock[0] += 4.9
    assert load()[1] == 0  # and cached for another period


@pytest.mark.django_db
@pytest.mark.parametrize(
    "edit",
    [
        lambda rule: Rule.objects.filter(pk=rule.pk).update(priority=50),
        lambda rule: Rule.objects.filter(pk=rule.pk).update(condition="context.points > 1"),
        lambda rule: Rule.objects.filter(pk=rule.pk).update(is_active=False),
        lambda rule: Rule.objects.filter(pk=rule.pk).update(event_type="other.type"),
        lambda rule: RewardLine.objects.filter(rule=rule).update(amount="99"),
        lambda rule: RewardLine.objects.filter(rule=rule).update(params={"badge": "x"}),
        lambda rule: RewardLine.objects.filter(rule=rule).delete(),
        lambda rule: RewardLine.objects.create(rule=rule, position=5, target="actor", reward_type="points", amount="1"),
        lambda rule: Rule.objects.filter(code="idle_rule").update(is_active=True),
        lambda rule: Rule.objects.filter(code="elsewhere_rule").update(event_type=EVENT_TYPE),
    ],
    ids=[
        "priority",
        "condition",
        "deactivated",
        "event_type",
        "line_amount",
        "line_params",
        "lines_deleted",
        "line_added",
        "other_rule_activated",
        "rule_moved_in",
    ],
)
def test_an_expired_entry_sees_any_edit_even_without_signals(clock, edit):
    rule = save_rule(lines=2)
    idle = save_rule("idle_rule", priority=300)
    Rule.objects.filter(pk=idle.pk).update(is_active=False)
    save_rule("elsewhere_rule", priority=400)
    Rule.objects.filter(code="elsewhere_rule").update(event_type="elsewhere.type")
    selectors.rules_cache_clear()
    before = _described(load()[0])

    # As if another process made the edit: nothing clears this process's cache.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(selectors, "rules_cache_clear", lambda: None)
        edit(rule)
    clock[0] += 4.9
    assert [r.code for r in load()[0]] == [code for code, *_ in before]  # still the cached rules
    clock[0] += 0.1

    after = _described(load()[0])
    selectors.rules_cache_clear()
    assert after == _described(rules_for_event_type(EVENT_TYPE))  # what a fresh read gives
    assert after != before


def _described(rules) -> list[tuple]:
    return [
        (rule.code, rule.priority, rule.condition, [(line.amount, line.params) for line in rule.rewards.all()])
        for rule in rules
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("seconds", [0, -1])
def test_zero_or_less_turns_the_cache_off(settings, seconds):
    settings.RULES_CACHE_SECONDS = seconds
    save_rule()

    assert [load()[1] for _ in range(3)] == [2, 2, 2]


@pytest.mark.django_db
def test_mutating_the_returned_list_does_not_change_the_cache():
    save_rule("a_rule")
    save_rule("b_rule", priority=200)

    rules = rules_for_event_type(EVENT_TYPE)
    rules.pop()
    rules.append("not a rule")
    rules.clear()

    again, queries = load()
    assert queries == 0
    assert [r.code for r in again] == ["a_rule", "b_rule"]
    assert again is not rules_for_event_type(EVENT_TYPE)


@pytest.mark.django_db
def test_a_load_that_raced_with_an_edit_is_not_stored(monkeypatch):
    rule = save_rule()
    load_rules = selectors._rules_load

    def load_then_edit(event_type):
        loaded = load_rules(event_type)
        # An edit lands (and clears the cache) while this load is in flight.
        Rule.objects.filter(pk=rule.pk).update(is_active=False)
        selectors.rules_cache_clear()
        return loaded

    monkeypatch.setattr(selectors, "_rules_load", load_then_edit)
    assert [r.code for r in rules_for_event_type(EVENT_TYPE)] == ["quest_rule"]
    monkeypatch.setattr(selectors, "_rules_load", load_rules)

    rules, queries = load()
    assert rules == []
    assert queries == 1
