"""Dispatch round trips: the claim is one statement, a worker keeps its database connection.

The semantics of the claim (states, backoff, rows held by other runs, unconfigured channels) are
pinned by test_dispatch.py; here: what it costs, that parallel runs still deliver once, and that a
reused worker connection is dropped when it broke or aged out.
"""

import time
from types import SimpleNamespace

import pytest
from connect.dispatch import reward_action_dispatch
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from config.celery import _database_connections_check, app
from connect.models import RewardAction
from points.selectors import account_totals
from points.services import account_credit

from ..points.test_concurrency import run_together
from .faults.helpers import action_create, assert_ledger_ok, credits_per_action, rule_create

Status = RewardAction.Status


@pytest.mark.django_db(transaction=True)
def test_a_points_dispatch_is_three_statements_without_an_explicit_transaction():
    rule = rule_create()
    account_credit(source="seed", external_id="seed", user_id="alice", amount=1)
    action = action_create(rule=rule, target="alice", amount=25)

    with CaptureQueriesContext(connection) as captured:
        outcome = reward_action_dispatch(action_id=action.pk)

    # claim (UPDATE ... RETURNING joined with the event), credit, record the outcome
    assert [q["sql"].split()[0] for q in captured.captured_queries] == ["WITH", "WITH", "UPDATE"]
    assert outcome.status == Status.COMPLETED
    action.refresh_from_db()
    assert (action.status, action.attempts, action.next_attempt_at) == (Status.COMPLETED, 1, None)
    assert action.result["balance"] == 26 and account_totals(user_id="alice")["balance"] == 26
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
