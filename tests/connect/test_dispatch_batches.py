"""Dispatch in batches: what a batch costs, that it mixes channels and keeps one action's failure to
itself, that parallel drains deliver each action once, and that a worker keeps its connection.

The semantics of one action (states, backoff, rows held by other runs, unconfigured channels) are
pinned by test_dispatch.py.
"""

import json
import time
from types import SimpleNamespace

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from werkzeug import Response

from config.celery import _database_connections_check, app
from connect.channels.nft import NftChannel
from connect.delivery import reward_action_dispatch, reward_actions_dispatch, reward_actions_drain
from connect.models import RewardAction
from points.models import Transaction
from points.selectors import account_totals
from points.services import account_credit

from ..points.test_concurrency import run_together
from .faults.helpers import action_create, assert_ledger_ok, credits_per_action, event_create, rule_create

Status = RewardAction.Status


@pytest.mark.django_db(transaction=True)
def test_a_batch_of_points_actions_costs_the_same_statements_whatever_its_size():
    rule = rule_create()
    for index in range(3):  # accounts open, as for most credits
        account_credit(source="seed", external_id=f"seed-{index}", user_id=f"user-{index}", amount=1)

    def statements(count: int) -> tuple[int, int]:
        for index in range(count):
            action_create(rule=rule, target=f"user-{index % 3}", amount=5)
        with CaptureQueriesContext(connection) as captured:
            outcomes = reward_actions_dispatch(limit=100)
        assert [o.status for o in outcomes] == [Status.COMPLETED] * count
        writes = [query["sql"] for query in captured.captured_queries if "INSERT INTO" in query["sql"]]
        # The credits of a batch are posted together: one statement writes all of their rows.
        assert len(writes) == 1 and all(
            table in writes[0] for table in ("points_transaction", "points_entry", "points_lot")
        )
        return len(captured.captured_queries), count

    small, large = statements(3), statements(30)
    assert large[0] == small[0]
    assert RewardAction.objects.filter(status=Status.COMPLETED).count() == 33
    assert sum(account_totals(user_id=f"user-{i}")["balance"] for i in range(3)) == 3 + 33 * 5
    assert_ledger_ok()


@pytest.mark.django_db(transaction=True)
def test_a_batch_claims_the_ringing_events_actions_first_and_then_the_longest_due():
    rule = rule_create()
    older = [action_create(rule=rule, target=f"old-{i}", amount=1, age_seconds=60 - i) for i in range(3)]
    ringing = action_create(rule=rule, target="new", amount=1)

    outcomes = reward_actions_dispatch(first_ids=[ringing.pk], limit=2)

    assert [o.action_id for o in outcomes] == [ringing.pk, older[0].pk]


@pytest.mark.django_db(transaction=True)
def test_a_claim_walks_the_due_actions_by_index_however_many_rows_left_the_queue():
    """Actions that left ``pending`` keep their entries in the due indexes until VACUUM. A bitmap scan
    reads every such entry and its heap page on every claim and never marks them dead; the planner
    picks one when a queue's statistics say few rows are pending (docs/performance.md). So the claim
    runs with bitmap scans off and walks an index, which marks the dead entries it passes. Which plan
    statistics lead to is not reproducible at a test's scale, so this pins the setting the claim runs
    under, and its plan over such a queue."""
    rule = rule_create()
    event = event_create(actor="q")
    RewardAction.objects.bulk_create(
        [
            RewardAction(
                event=event, rule=rule, rule_code=rule.code, rule_version=rule.version, target_user_id=f"q-{n}",
                reward_type="points", amount=1, status=Status.COMPLETED,
            )
            for n in range(5000)
        ]
    )  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE connect_rewardaction")  # a queue's statistics: hardly anything pending
    # The rows go through the queue, as dispatch moves them: each change leaves index entries behind.
    RewardAction.objects.update(status=Status.PENDING, next_attempt_at=timezone.now())
    RewardAction.objects.exclude(pk__in=RewardAction.objects.order_by("pk").values("pk")[:100]).update(
        status=Status.COMPLETED, next_attempt_at=None
    )

    seen = {}

    def record(execute, sql, params, many, context):
        if "WITH claimed" in sql and "plan" not in seen:
            seen["plan"] = ""  # the statements below pass through here too
            cursor = context["cursor"]
            cursor.execute("SELECT current_setting('enable_bitmapscan')")
            seen["bitmap"] = cursor.fetchone()[0]
            cursor.execute("EXPLAIN " + sql, params)
            seen["plan"] = "\n".join(row[0] for row in cursor.fetchall())
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        outcomes = reward_actions_dispatch(limit=20)
    assert seen["bitmap"] == "off"
    assert "Bitmap" not in seen["plan"] and "Index Scan" in seen["plan"], seen["plan"]
    assert [outcome.status for outcome in outcomes] == [Status.COMPLETED] * 20
    assert RewardAction.objects.filter(status=Status.PENDING).count() == 80
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('enable_bitmapscan')")
        assert cursor.fetchone()[0] == "on"  # only the claim's transaction


@pytest.mark.django_db(transaction=True)
def test_a_refused_credit_does_not_undo_the_others_in_its_batch(settings):
    rule = rule_create()
    actions = [action_create(rule=rule, target=f"user-{i}", amount=10 + i) for i in range(3)]
    # Another client already used the middle action's id as the ledger key with another request.
    account_credit(source=settings.CONNECT_LEDGER_SOURCE, external_id=str(actions[1].pk), user_id="mallory", amount=1)

    outcomes = {o.action_id: o for o in reward_actions_dispatch(limit=10)}

    assert outcomes[actions[1].pk].status == Status.FAILED
    assert "idempotency_conflict" in outcomes[actions[1].pk].error
    assert [outcomes[a.pk].status for a in (actions[0], actions[2])] == [Status.COMPLETED] * 2
    assert account_totals(user_id="user-0")["balance"] == 10 and account_totals(user_id="user-2")["balance"] == 12
    assert account_totals(user_id="user-1")["balance"] == 0
    assert_ledger_ok()


@pytest.mark.django_db(transaction=True)
def test_a_mixed_batch_where_one_http_call_times_out_completes_the_others_and_retries_the_slow_one(
    threaded_httpserver, settings
):
    httpserver = threaded_httpserver
    settings.NFT_SERVICE_URL = settings.G2A_GATEWAY_URL = httpserver.url_for("")
    settings.CHANNEL_READ_TIMEOUT_SECONDS = 1
    settings.DISPATCH_RETRY_BASE_SECONDS = 30

    def answer(request):
        body = json.loads(request.data)
        if body.get("badge_type") == "slow":
            time.sleep(2)
        return Response(json.dumps({"ok": body["action_id"]}), content_type="application/json")

    httpserver.expect_request("/badges").respond_with_handler(answer)
    httpserver.expect_request("/payouts").respond_with_handler(answer)
    rule = rule_create()
    event = event_create()
    points = [action_create(rule=rule, event=event, target=f"p-{i}", amount=7) for i in range(3)]
    badges = [
        action_create(rule=rule, event=event, reward_type="nft", amount=1, params={"badge_type": "gold"})
        for _ in range(2)
    ]
    slow = action_create(rule=rule, event=event, reward_type="nft", amount=1, params={"badge_type": "slow"})
    payouts = [action_create(rule=rule, event=event, reward_type="g2a_offchain", amount=3) for _ in range(2)]

    outcomes = {o.action_id: o for o in reward_actions_dispatch(limit=50)}

    done = [*points, *badges, *payouts]
    assert {outcomes[a.pk].status for a in done} == {Status.COMPLETED}
    for action in done:
        action.refresh_from_db()
        assert action.status == Status.COMPLETED and action.attempts == 1
    slow.refresh_from_db()
    assert (slow.status, slow.attempts) == (Status.PENDING, 1) and "timed out" in slow.last_error
    assert outcomes[slow.pk].retry_in is not None and slow.next_attempt_at is not None
    assert all(account_totals(user_id=f"p-{i}")["balance"] == 7 for i in range(3))

    # Once due, the slow one is tried again and, answered in time, completes.
    settings.CHANNEL_READ_TIMEOUT_SECONDS = 5
    RewardAction.objects.filter(pk=slow.pk).update(next_attempt_at=None)
    assert reward_action_dispatch(action_id=slow.pk).status == Status.COMPLETED
    slow.refresh_from_db()
    assert (slow.status, slow.attempts) == (Status.COMPLETED, 2)
    assert_ledger_ok()


@pytest.mark.django_db(transaction=True)
def test_an_outcome_that_cannot_be_stored_fails_its_action_and_not_the_batch(settings, caplog, monkeypatch):
    """PostgreSQL refuses a NUL character in jsonb: a channel whose result holds one (the HTTP
    channels replace it; another channel might not) must not keep the other actions of the batch
    from being recorded, nor stop the drain."""
    settings.NFT_SERVICE_URL = "http://127.0.0.1:9"

    def deliver(self, action):
        return {"note": "\x00" if action.params["badge_type"] == "poison" else "fine"}

    monkeypatch.setattr(NftChannel, "deliver", deliver)
    rule = rule_create()
    poison = action_create(rule=rule, reward_type="nft", amount=1, params={"badge_type": "poison"})
    others = [action_create(rule=rule, reward_type="nft", amount=1, params={"badge_type": "b"}) for _ in range(2)]
    points = action_create(rule=rule, target="carol", amount=4)

    result = reward_actions_drain()

    assert result.delivered == 4
    for action in [*others, points]:
        action.refresh_from_db()
        assert action.status == Status.COMPLETED
    poison.refresh_from_db()
    assert poison.status == Status.FAILED and "could not be stored" in poison.last_error
    assert "could not be stored" in caplog.text
    assert account_totals(user_id="carol")["balance"] == 4


@pytest.mark.django_db(transaction=True)
def test_two_drains_of_one_backlog_deliver_every_action_once_without_deadlock(settings):
    settings.DISPATCH_BATCH_SIZE = 25
    rule = rule_create()
    # Few users, so both drains' batches lock the same accounts (in the same order).
    actions = [action_create(rule=rule, target=f"user-{i % 4}", amount=1 + i % 5) for i in range(300)]
    expected = {f"user-{u}": sum(1 + i % 5 for i in range(300) if i % 4 == u) for u in range(4)}

    results = run_together(lambda i: reward_actions_drain(), count=2)

    assert not [r for r in results if isinstance(r, Exception)], results
    assert sum(r.delivered for r in results) == 300
    assert all(r.delivered > 0 for r in results), "both drains took part"
    assert RewardAction.objects.filter(status=Status.COMPLETED).count() == 300
    assert credits_per_action([a.pk for a in actions]) == {str(a.pk): 1 for a in actions}
    assert Transaction.objects.count() == 300
    for user_id, balance in expected.items():
        assert account_totals(user_id=user_id)["balance"] == balance
    assert_ledger_ok()


@pytest.mark.django_db(transaction=True)
def test_parallel_runs_of_one_action_deliver_it_once():
    rule = rule_create()
    action = action_create(rule=rule, target="bob", amount=40)

    outcomes = run_together(lambda i: reward_action_dispatch(action_id=action.pk), count=8)

    assert not [o for o in outcomes if isinstance(o, Exception)]
    assert [o.status for o in outcomes if o.ran] == [Status.COMPLETED]
    assert credits_per_action([action.pk]) == {str(action.pk): 1}
    action.refresh_from_db()
    assert (action.status, action.attempts) == (Status.COMPLETED, 1)
    assert account_totals(user_id="bob")["balance"] == 40
    assert_ledger_ok()


def test_workers_reuse_their_database_connection():
    assert app.conf.get("CELERY_DB_REUSE_MAX") == django_settings.CELERY_DB_REUSE_MAX > 0


@pytest.mark.django_db(transaction=True)
def test_a_worker_drops_a_connection_that_aged_out_but_not_inside_an_inline_task():
    worker_task = SimpleNamespace(request=SimpleNamespace(is_eager=False))
    inline_task = SimpleNamespace(request=SimpleNamespace(is_eager=True))
    connection.ensure_connection()
    connection.close_at = time.monotonic() - 1  # past DB_CONN_MAX_AGE

    _database_connections_check(sender=inline_task)
    assert connection.connection is not None

    _database_connections_check(sender=worker_task)
    assert connection.connection is None

    connection.ensure_connection()
    connection.close_at = time.monotonic() + 60
    _database_connections_check(sender=worker_task)
    assert connection.connection is not None  # young and healthy: kept
