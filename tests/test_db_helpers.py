"""The single-statement helpers the ledger, the event inbox and dispatch share (config/db.py)."""

import uuid

import pytest
from django.db import DataError, IntegrityError, connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from config.db import (
    insert_rows,
    insert_unless_conflict,
    insert_with_dependents_unless_conflict,
    model_from_row,
    prepared_cursor,
    returning_columns,
    update_columns,
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


def test_model_from_row_gives_what_the_orm_loads():
    action = _stored_action(params={"badge": ["gold", 1]}, next_attempt_at=None)
    table = connection.ops.quote_name(RewardAction._meta.db_table)

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {returning_columns(RewardAction)} FROM {table} WHERE id = %s", [action.pk])
        row = cursor.fetchone()
    built = model_from_row(RewardAction, row)

    loaded = RewardAction.objects.get(pk=action.pk)
    names = [field.attname for field in RewardAction._meta.concrete_fields]
    assert [getattr(built, name) for name in names] == [getattr(loaded, name) for name in names]
    assert built.params == {"badge": ["gold", 1]}  # JSON converted, not left as text
    assert built._state.adding is False and built._state.db == "default"


@pytest.mark.django_db(transaction=True)
def test_insert_with_dependents_refuses_a_too_long_text_instead_of_cutting_it():
    rule = Rule.objects.create(code="r", name="r", event_type="t")
    event = _event("e-long")
    too_long = _action(event, rule, target_user_id="u" * 101)  # the column is varchar(100)

    with pytest.raises(DataError):
        insert_with_dependents_unless_conflict(event, ("source_service", "external_id"), [too_long])

    assert not EconomicEvent.objects.filter(external_id="e-long").exists()  # one statement: nothing written
    assert not RewardAction.objects.exists()


def test_an_event_with_two_actions_stays_within_psycopgs_cached_statement_size():
    """NULLs go into the text, so an event with two reward actions (the common case) is sent with
    at most 50 parameters, the most for which psycopg reuses how it parsed the statement's text."""
    from psycopg import _queries

    rule = Rule.objects.create(code="r", name="r", event_type="t")
    event = _event("e-cache", primary_subject_user_id="v", occurred_at=None)
    actions = [_action(event, rule), _action(event, rule, target_user_id="v")]
    sent = []

    def record(execute, sql, params, many, context):
        sent.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        assert insert_with_dependents_unless_conflict(event, ("source_service", "external_id"), actions) is True

    [(sql, params)] = sent
    assert None not in params and len(params) <= _queries.MAX_CACHED_STATEMENT_PARAMS
    assert len(sql.encode()) <= _queries.MAX_CACHED_STATEMENT_LENGTH
    stored = RewardAction.objects.get(pk=actions[0].pk)
    assert (stored.completed_at, stored.cancelled_by_id) == (None, None)


# --- prepared_cursor ------------------------------------------------------------------------------

_PREPARED_SQL = "SELECT %s * %s, %s::text"


def _prepared_statements(text: str) -> list[tuple[str, list[str]]]:
    """This session's server-side prepared statements with ``text`` (psycopg's $n form)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT name, parameter_types::text[] FROM pg_prepared_statements WHERE statement = %s", [text])
        return cursor.fetchall()


def test_a_statement_through_prepared_cursor_is_prepared_once_with_every_int_as_bigint():
    """Parsed and planned once per connection: later runs, whatever the ints' sizes, reuse it.
    As a bigint, 30000 * 30000 does not overflow the smallint psycopg would otherwise send."""
    results = []
    for numbers in ((2, 3), (30000, 30000), (2**40, 2)):
        with prepared_cursor() as cursor:
            cursor.execute(_PREPARED_SQL, [*numbers, "x"])
            results.append(cursor.fetchone())

    assert results == [(6, "x"), (900000000, "x"), (2**41, "x")]
    [(_, types)] = _prepared_statements("SELECT $1 * $2, $3::text")
    assert types[:2] == ["bigint", "bigint"]


@pytest.mark.django_db(transaction=True)
def test_a_prepared_statement_is_prepared_again_after_a_rollback():
    """psycopg drops its prepared statements on a rollback; the next run prepares afresh."""
    with prepared_cursor() as cursor:
        cursor.execute(_PREPARED_SQL, [1, 2, "a"])
    with pytest.raises(DataError), transaction.atomic():
        with prepared_cursor() as cursor:
            cursor.execute(_PREPARED_SQL, [1, 2, "b"])
            cursor.execute("SELECT 1 / %s", [0])
    with prepared_cursor() as cursor:
        cursor.execute(_PREPARED_SQL, [3, 4, "c"])
        assert cursor.fetchone() == (12, "c")
    assert len(_prepared_statements("SELECT $1 * $2, $3::text")) == 1


def test_prepared_cursor_logs_and_translates_errors_as_django_cursors_do():
    with CaptureQueriesContext(connection) as captured:
        with prepared_cursor() as cursor:
            cursor.execute(_PREPARED_SQL, [2, 3, "it's"])
    with CaptureQueriesContext(connection) as plain:
        with connection.cursor() as cursor:
            cursor.execute(_PREPARED_SQL, [2, 3, "it's"])
    assert [q["sql"] for q in captured] == [q["sql"] for q in plain] == ["SELECT 2 * 3, 'it''s'::text"]

    with pytest.raises(IntegrityError), transaction.atomic():
        with prepared_cursor() as cursor:
            cursor.execute("INSERT INTO connect_economicevent (id) VALUES (%s)", [uuid.uuid4()])  # NOT NULLs


@override_settings(DB_PREPARED_STATEMENTS=False)
def test_with_prepared_statements_off_prepared_cursor_is_djangos_own():
    with prepared_cursor() as cursor:
        cursor.execute(_PREPARED_SQL, [2, 3, "x"])
        assert cursor.fetchone() == (6, "x")
    assert _prepared_statements("SELECT $1 * $2, $3::text") == []


def test_a_statement_whose_text_cannot_be_composed_for_the_log_still_runs(monkeypatch):
    def refuse(sql, params):
        raise DataError("cannot quote")

    monkeypatch.setattr(connection.ops, "compose_sql", refuse)
    with CaptureQueriesContext(connection) as captured:
        with prepared_cursor() as cursor:
            cursor.execute(_PREPARED_SQL, [2, 3, "x"])
            assert cursor.fetchone() == (6, "x")
    assert [q["sql"] for q in captured] == [None]
