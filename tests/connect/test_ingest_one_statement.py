"""Most events are written in one statement that, in autocommit mode, is its own transaction: the
event and its actions together or not at all. Events that project a profile or count a once-only
reward, and any call inside a caller's transaction, take the transactional path. Both paths store
the same rows; these tests pin that, the statements, replays, and a race on one external_id.

They run without the test's wrapping transaction (``transaction=True``): only in autocommit mode is
the one-statement path taken.
"""

import threading

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from config.api.errors import IdempotencyConflict
from connect.models import EconomicEvent, RewardAction, RewardGrant
from connect.services import event_ingest
from points.models import Account

pytestmark = pytest.mark.django_db(transaction=True)

SOURCE = "quest_service"


def _quest(external_id: str, **overrides) -> dict:
    return {
        "external_id": external_id,
        "event_type": "quest.completed",
        "actor_user_id": "u-actor",
        "primary_subject_user_id": "u-subject",
        "context": {"base_reward_points": 40, "total_quests_completed": 1},
        "occurred_at": None,
        **overrides,
    }


def _writes(captured) -> list[str]:
    """Each statement but the reads, reduced to its verb and the Connect tables it names."""
    out = []
    for query in captured.captured_queries:
        sql = query["sql"]
        verb = sql.split()[0].upper()
        if verb != "SELECT":
            tables = [t for t in ("connect_economicevent", "connect_rewardaction", "connect_rewardgrant") if t in sql]
            out.append(" ".join([verb, *tables]))
    return out


@pytest.fixture
def doorbells(monkeypatch):
    """The action ids ingest hands to dispatch, and whether a transaction was still open then."""
    rung = []

    def record(action_ids):
        rung.append((list(action_ids), connection.in_atomic_block))

    monkeypatch.setattr("connect.services.doorbell_ring_on_commit", record)
    return rung


_ACTION_FIELDS = (
    "rule_code",
    "rule_version",
    "reward_line_id",
    "target_user_id",
    "reward_type",
    "amount",
    "params",
    "status",
    "locked_until_condition",
    "attempts",
)


def _stored(event_id) -> tuple[tuple, list[tuple]]:
    event = EconomicEvent.objects.get(pk=event_id)
    actions = RewardAction.objects.filter(event_id=event_id)
    event_row = (event.event_type, event.actor_user_id, event.context, event.status, event.error, event.payload_hash)
    return event_row, sorted(tuple(getattr(a, name) for name in _ACTION_FIELDS) for a in actions)


@pytest.mark.usefixtures("demo_rules")
def test_an_event_with_actions_is_one_statement_that_commits_itself(doorbells):
    with CaptureQueriesContext(connection) as captured:
        result = event_ingest(client_name=SOURCE, data=_quest("one"))

    # No BEGIN, SAVEPOINT or COMMIT: the one statement is its own transaction.
    assert _writes(captured) == ["WITH connect_economicevent connect_rewardaction"]
    assert result.replayed is False and result.event.status == "processed"
    assert len(result.actions) == 2
    assert all(not row._state.adding for row in [result.event, *result.actions])
    assert doorbells == [([str(a.pk) for a in result.actions], False)]
    assert RewardAction.objects.filter(event=result.event).count() == 2


@pytest.mark.usefixtures("demo_rules")
def test_the_doorbells_ring_once_the_statement_committed():
    result = event_ingest(client_name=SOURCE, data=_quest("paid"))

    # Tasks run inline here: both credits were dispatched and paid.
    assert set(RewardAction.objects.filter(event=result.event).values_list("status", flat=True)) == {"completed"}
    assert Account.objects.get(user_id="u-actor").balance == 40  # base_reward_points
    assert Account.objects.get(user_id="u-subject").balance == 20  # half of it


@pytest.mark.usefixtures("demo_rules")
def test_both_paths_store_the_same_rows():
    fast = event_ingest(client_name=SOURCE, data=_quest("fast"))
    with transaction.atomic():  # inside a caller's transaction: the transactional path
        slow = event_ingest(client_name=SOURCE, data=_quest("slow"))

    fast_event, fast_actions = _stored(fast.event.pk)
    slow_event, slow_actions = _stored(slow.event.pk)
    assert fast_event[:5] == slow_event[:5]
    assert fast_actions == slow_actions and len(fast_actions) == 2
    traces = [EconomicEvent.objects.get(pk=result.event.pk).trace for result in (fast, slow)]
    assert traces[0] == traces[1] and traces[0]["rules"][0]["result"] == "matched"


@pytest.mark.parametrize(
    "budget, line",
    [(1000, {}), (None, {"max_per_target_per_period": 5, "period": "day"})],
    ids=["budget", "period cap"],
)
def test_a_rule_with_a_budget_or_a_period_cap_takes_the_transactional_path_and_is_counted(
    make_rule, doorbells, budget, line
):
    from rules.models import BudgetCounter, PeriodGrant

    make_rule("counted", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "7", **line}],
              budget=budget)  # fmt: skip

    with CaptureQueriesContext(connection) as captured:
        result = event_ingest(client_name=SOURCE, data=_quest("counted-1"))

    writes = _writes(captured)
    assert "WITH connect_economicevent connect_rewardaction" not in writes and writes[0] == "BEGIN"
    assert [a.amount for a in result.actions] == [7]
    if budget:
        assert BudgetCounter.objects.get().used == 7
    else:
        assert PeriodGrant.objects.get().count == 1


def test_an_event_no_rule_rewards_is_stored_ignored_in_one_statement(doorbells):
    with CaptureQueriesContext(connection) as captured:
        result = event_ingest(client_name=SOURCE, data=_quest("nobody", event_type="nobody.cares"))

    assert _writes(captured) == ["WITH connect_economicevent"]
    assert doorbells == [([], False)]
    assert result.actions == []
    assert EconomicEvent.objects.get(pk=result.event.pk).status == "ignored"


def test_a_rule_that_fails_stores_the_event_failed_and_no_action(make_rule):
    make_rule("divides", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "1 / 0"}])

    result = event_ingest(client_name=SOURCE, data=_quest("fails"))

    stored = EconomicEvent.objects.get(pk=result.event.pk)
    assert stored.status == "failed" and "divides" in stored.error
    assert not RewardAction.objects.filter(event=stored).exists()
    assert [(rule["rule"], rule["result"]) for rule in stored.trace["rules"]] == [("divides", "error")]


@pytest.mark.usefixtures("demo_rules")
def test_a_replay_writes_nothing_and_a_changed_payload_is_refused():
    first = event_ingest(client_name=SOURCE, data=_quest("again"))

    replay = event_ingest(client_name=SOURCE, data=_quest("again"))
    assert replay.replayed is True and replay.event.pk == first.event.pk
    with pytest.raises(IdempotencyConflict):
        event_ingest(client_name=SOURCE, data=_quest("again", actor_user_id="someone-else"))

    assert EconomicEvent.objects.filter(external_id="again").count() == 1
    assert RewardAction.objects.filter(event_id=first.event.pk).count() == 2


@pytest.mark.usefixtures("demo_rules")
def test_a_once_only_reward_takes_the_transactional_path_and_is_counted(doorbells):
    tenth = {"base_reward_points": 40, "total_quests_completed": 10}

    with CaptureQueriesContext(connection) as captured:
        first = event_ingest(client_name=SOURCE, data=_quest("tenth-1", context=tenth))
    second = event_ingest(client_name=SOURCE, data=_quest("tenth-2", context=tenth))

    writes = _writes(captured)
    assert "WITH connect_economicevent connect_rewardaction" not in writes
    assert writes[:2] == ["BEGIN", "INSERT connect_economicevent"] and "UPDATE connect_rewardgrant" in writes
    assert doorbells[0][1] is True  # handed over inside the transaction, to ring on its commit
    assert sorted(a.reward_type for a in first.actions) == ["nft", "points", "points"]
    assert sorted(a.reward_type for a in second.actions) == ["points", "points"]  # the badge once only
    assert RewardGrant.objects.get(target_user_id="u-actor").count == 1


@pytest.mark.usefixtures("demo_rules")
def test_an_event_that_projects_a_profile_takes_the_transactional_path(doorbells):
    data = _quest(
        "joined",
        event_type="referral.joined",
        actor_user_id="newcomer",
        primary_subject_user_id="sponsor",
        context={"level": 1},
    )

    with CaptureQueriesContext(connection) as captured:
        result = event_ingest(client_name=SOURCE, data=data)

    assert _writes(captured)[:2] == ["BEGIN", "INSERT connect_economicevent"]
    assert "WITH connect_economicevent connect_rewardaction" not in _writes(captured)
    assert result.actions and result.event.status == "processed"


@pytest.mark.usefixtures("demo_rules")
def test_racing_posts_of_one_event_store_it_and_its_actions_once():
    results, errors = [], []
    start = threading.Barrier(6)

    def post():
        try:
            start.wait()
            results.append(event_ingest(client_name=SOURCE, data=_quest("raced")))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=post) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(r.replayed for r in results) == [False] + [True] * 5
    event = EconomicEvent.objects.get(external_id="raced")
    assert RewardAction.objects.filter(event=event).count() == 2
    assert {r.event.pk for r in results} == {event.pk}
