"""The single-statement helpers the ledger, the event inbox and dispatch share (config/db.py)."""

import ast
import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from django.db import DataError, connection
from django.test.utils import CaptureQueriesContext

from config.db import (
    insert_rows,
    insert_unless_conflict,
    insert_with_dependents_unless_conflict,
    update_columns,
    update_rows_where,
    update_where,
)
from connect.models import EconomicEvent, RewardAction
from points.models import Account
from rules.models import Rule

pytestmark = pytest.mark.django_db


def _event(external_id: str, **fields) -> EconomicEvent:
    values = {"source_service": "svc", "event_type": "t", "actor_user_id": "u", "payload_hash": "h", **fields}
    return EconomicEvent(external_id=external_id, **values)


def test_insert_unless_conflict_inserts_once_and_then_reports_the_conflict():
    first = _event("e-1", context={"k": [1, 2]})
    with CaptureQueriesContext(connection) as captured:
        assert insert_unless_conflict(first, ("source_service", "external_id")) is True
    assert len(captured) == 1
    assert first._state.adding is False and first._state.db == "default"
    stored = EconomicEvent.objects.get(pk=first.pk)
    assert (stored.external_id, stored.context, stored.received_at) == ("e-1", {"k": [1, 2]}, first.received_at)

    again = _event("e-1", event_type="other")
    assert insert_unless_conflict(again, ("source_service", "external_id")) is False
    assert again._state.adding is True
    assert EconomicEvent.objects.get(external_id="e-1").event_type == "t"  # the stored row is untouched


@pytest.mark.ledger_broken  # accounts written without entries: a test of the helper, not of a ledger
def test_insert_rows_writes_all_in_one_statement_and_sets_database_assigned_keys():
    accounts = [Account(kind=Account.Kind.USER, user_id=f"user-{n}", balance=n, held=0) for n in range(3)]

    with CaptureQueriesContext(connection) as captured:
        insert_rows(accounts)

    assert len(captured) == 1
    for account in accounts:
        assert account.pk is not None and account._state.adding is False
        assert Account.objects.get(pk=account.pk).user_id == account.user_id  # each key went to its own row
    insert_rows([])  # nothing to write is no statement and no error


def test_update_columns_writes_only_the_named_fields():
    event = _event("e-2")
    insert_unless_conflict(event, ("source_service", "external_id"))
    EconomicEvent.objects.filter(pk=event.pk).update(error="written elsewhere")
    event.status, event.event_type = EconomicEvent.Status.FAILED, "changed in memory only"

    update_columns(event, ["status"])

    stored = EconomicEvent.objects.get(pk=event.pk)
    assert (stored.status, stored.event_type, stored.error) == ("failed", "t", "written elsewhere")


def _action(event: EconomicEvent, rule, **fields) -> RewardAction:
    values = {
        "rule": rule, "rule_code": rule.code, "rule_version": 1, "target_user_id": "u", "reward_type": "points",
        "amount": 5, "status": "pending", **fields,
    }  # fmt: skip
    return RewardAction(event=event, **values)


@pytest.mark.django_db(transaction=True)
def test_insert_with_dependents_writes_parent_and_rows_in_one_statement_or_nothing():
    rule = Rule.objects.create(code="r", name="r", event_type="t")
    event = _event("e-1", primary_subject_user_id=None)  # NULLs and JSON go through the typed VALUES
    actions = [
        _action(event, rule, params={"badge": "gold"}, next_attempt_at=None, reward_line=None),
        _action(event, rule, status="locked", locked_until_condition="vip", amount=7),
    ]

    with CaptureQueriesContext(connection) as captured:
        assert insert_with_dependents_unless_conflict(event, ("source_service", "external_id"), actions) is True

    assert len(captured) == 1 and captured[0]["sql"].startswith("WITH ")
    assert all(not row._state.adding for row in [event, *actions])
    stored = {a.pk: a for a in RewardAction.objects.filter(event_id=event.pk)}
    assert stored.keys() == {a.pk for a in actions}
    assert (stored[actions[0].pk].params, stored[actions[0].pk].reward_line_id) == ({"badge": "gold"}, None)
    assert (stored[actions[1].pk].status, stored[actions[1].pk].amount) == ("locked", 7)
    assert EconomicEvent.objects.get(pk=event.pk).primary_subject_user_id is None

    again = _event("e-1")
    assert (
        insert_with_dependents_unless_conflict(again, ("source_service", "external_id"), [_action(again, rule)])
        is False
    )
    assert again._state.adding is True
    assert RewardAction.objects.count() == 2  # the dependents of a conflicting parent are not written

    alone = _event("e-2")
    assert insert_with_dependents_unless_conflict(alone, ("source_service", "external_id"), []) is True
    assert EconomicEvent.objects.filter(pk=alone.pk).exists()


def _stored_action(**fields) -> RewardAction:
    rule = Rule.objects.create(code="r", name="r", event_type="t")
    event = _event("e-1")
    event.save()
    action = _action(event, rule, **fields)
    action.save()
    return action


def test_update_where_changes_the_row_only_while_the_guard_holds():
    action = _stored_action(status="dispatched", attempts=2, params={"keep": True})

    with CaptureQueriesContext(connection) as captured:
        changed = update_where(
            RewardAction,
            action.pk,
            {"status": "completed", "result": {"transaction_id": "t-1", "balance": 5}},
            where={"status": "dispatched", "attempts": 2},
        )
    assert changed == 1 and len(captured) == 1
    stored = RewardAction.objects.get(pk=action.pk)
    assert (stored.status, stored.result, stored.params) == (
        "completed",
        {"transaction_id": "t-1", "balance": 5},
        {"keep": True},
    )

    late = update_where(RewardAction, action.pk, {"status": "failed"}, where={"status": "dispatched", "attempts": 2})
    assert late == 0
    assert RewardAction.objects.get(pk=action.pk).status == "completed"


@pytest.mark.django_db(transaction=True)
def test_insert_with_dependents_refuses_a_too_long_text_instead_of_cutting_it():
    rule = Rule.objects.create(code="r", name="r", event_type="t")
    event = _event("e-long")
    too_long = _action(event, rule, target_user_id="u" * 101)  # the column is varchar(100)

    with pytest.raises(DataError):
        insert_with_dependents_unless_conflict(event, ("source_service", "external_id"), [too_long])

    assert not EconomicEvent.objects.filter(external_id="e-long").exists()  # one statement: nothing written
    assert not RewardAction.objects.exists()


def test_update_rows_where_changes_each_row_only_while_its_guard_holds():
    rule = Rule.objects.create(code="r", name="r", event_type="t")
    event = _event("e-rows")
    event.save()
    held, moved_on = _action(event, rule, attempts=1), _action(event, rule, attempts=1)
    held.save()
    moved_on.save()
    RewardAction.objects.filter(pk=moved_on.pk).update(attempts=5)  # another run claimed it since
    for action in (held, moved_on):
        action.status, action.result = "completed", {"badge": str(action.pk), "n": [1, 2]}

    with CaptureQueriesContext(connection) as captured:
        changed = update_rows_where([held, moved_on], ["status", "result"], where={"attempts": lambda a: 1})

    assert changed == {held.pk} and len(captured.captured_queries) == 1
    stored = RewardAction.objects.get(pk=held.pk)
    assert (stored.status, stored.result) == ("completed", {"badge": str(held.pk), "n": [1, 2]})
    untouched = RewardAction.objects.get(pk=moved_on.pk)
    assert (untouched.status, untouched.result, untouched.attempts) != ("completed", held.result, 1)
    assert untouched.result == {} and untouched.attempts == 5
    assert update_rows_where([], ["status"], where={}) == set()


def test_update_rows_where_stores_every_kind_of_value_exactly_as_given():
    """The rows travel as one JSON document: moments keep their microseconds, texts their quotes and
    backslashes, JSON values their nesting, NULLs stay NULL."""
    rule = Rule.objects.create(code="r", name="r", event_type="t")
    event = _event("e-kinds")
    event.save()
    action = _action(event, rule, attempts=1)
    action.save()
    moment = datetime(2026, 12, 7, 5, 1, 2, 345678, tzinfo=UTC)
    action.status, action.completed_at, action.next_attempt_at = "failed", moment, None
    action.last_error = "said \"no\" \\ twice\n{['x']}"
    action.result = {"quote": 'a "b"', "nested": {"list": [1, None, True, "\\"]}}
    action.shortfall = 7

    fields = ["status", "completed_at", "next_attempt_at", "last_error", "result", "shortfall"]
    assert update_rows_where([action], fields, where={"attempts": lambda a: 1}) == {action.pk}

    stored = RewardAction.objects.get(pk=action.pk)
    assert [getattr(stored, name) for name in fields] == [getattr(action, name) for name in fields]


@pytest.mark.django_db(transaction=True)
def test_insert_with_dependents_writes_empty_texts_and_zeros_into_the_text_and_stores_them_as_given():
    rule = Rule.objects.create(code="r", name="r", event_type="t")
    event = _event("e-lit", error="", context={})
    actions = [
        _action(event, rule, amount=5, attempts=0, last_error="", target_user_id="u-0"),
        _action(event, rule, amount=12, attempts=3, last_error="timeout", target_user_id="u-1"),
    ]
    sent = []

    def record(execute, sql, params, many, context):
        sent.append((sql, list(params)))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        assert insert_with_dependents_unless_conflict(event, ("source_service", "external_id"), actions) is True

    ((sql, params),) = sent
    assert "" not in params and 0 not in params  # none of them went as a parameter
    assert 12 in params and 3 in params and "timeout" in params
    assert len(params) <= 50  # an event with two actions stays within psycopg's cache of parsed statements
    stored = {a.target_user_id: a for a in RewardAction.objects.filter(event_id=event.pk)}
    assert (stored["u-0"].amount, stored["u-0"].attempts, stored["u-0"].last_error) == (5, 0, "")
    assert (stored["u-1"].amount, stored["u-1"].attempts, stored["u-1"].last_error) == (12, 3, "timeout")
    assert EconomicEvent.objects.get(pk=event.pk).error == ""


def _prepared_texts() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.django_db(transaction=True)
def test_a_connection_prepares_the_event_insert_once_it_has_run_it_a_few_times(settings):
    """DB_PREPARED_STATEMENTS (Django's server_side_binding and prepare_threshold): after
    DB_PREPARE_THRESHOLD runs of one text, PostgreSQL parses and plans it once for the rest."""
    connection.close()  # a connection of its own: nothing prepared on it yet
    threshold = connection.settings_dict["OPTIONS"]["prepare_threshold"]
    rule = Rule.objects.create(code="r", name="r", event_type="t")
    for n in range(threshold + 2):
        event = _event(f"e-prep-{n}", context={"n": n})
        actions = [_action(event, rule, amount=n + 1, target_user_id=f"u-{n}")]
        assert insert_with_dependents_unless_conflict(event, ("source_service", "external_id"), actions) is True

    inserts = [text for text in _prepared_texts() if "connect_economicevent" in text]
    assert len(inserts) == 1  # one prepared form for every later run
    stored = sorted(RewardAction.objects.values_list("event__external_id", "amount"))
    assert stored == [(f"e-prep-{n}", n + 1) for n in range(threshold + 2)]


def test_prepared_statements_can_be_turned_off_for_a_pooler_in_transaction_mode():
    options = _database_options(DB_PREPARED_STATEMENTS="0")
    assert "server_side_binding" not in options and "prepare_threshold" not in options
    on = _database_options()
    assert (on["server_side_binding"], on["prepare_threshold"]) == (True, 5)


def _database_options(**env) -> dict:
    script = "import django; django.setup(); from django.conf import settings; print(repr(settings.DATABASES['default'].get('OPTIONS', {})))"
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "SECRET_KEY": "x",
             "DATABASE_URL": "postgres://root@127.0.0.1:5432/postgres", **env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-1000:]
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])
