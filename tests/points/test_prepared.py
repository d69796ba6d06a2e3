"""The ledger's hot statements are prepared once per connection (points.prepared) and give the same
rows and errors as when sent as they are."""

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext, override_settings

from points import prepared
from points.models import Transaction

from .conftest import assert_ledger_ok, credit, totals

pytestmark = pytest.mark.django_db(transaction=True)

SQL = "SELECT CAST(%s AS bigint) + 1, CAST(%s AS text)"


def _run(sql=SQL, params=(41, "x")):
    with connection.cursor() as cursor:
        prepared.execute(cursor, sql, list(params))
        return cursor.fetchone()


def _words(captured) -> list[str]:
    return [query["sql"].split()[0].upper() for query in captured.captured_queries]


def _prepared_here() -> list[str]:
    """The statements prepared on this connection, as PostgreSQL lists them."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE name LIKE 'points%%'")
        return [row[0].split(" AS ", 1)[1] for row in cursor.fetchall()]


def test_a_statement_is_prepared_once_per_connection_then_executed():
    connection.close()
    with CaptureQueriesContext(connection) as captured:
        assert _run() == (42, "x")
        assert _run(params=(2**40, "y")) == (2**40 + 1, "y")  # any int size: one prepared form
    assert _words(captured) == ["EXECUTE", "EXECUTE"]  # the PREPARE is connection set-up, not logged
    assert _prepared_here() == ["SELECT CAST($1 AS bigint) + 1, CAST($2 AS text)"]

    connection.close()  # a new connection has nothing prepared
    assert _prepared_here() == []
    with CaptureQueriesContext(connection) as captured:
        assert _run() == (42, "x")
    assert _words(captured) == ["EXECUTE"]
    assert len(_prepared_here()) == 1


def test_a_rollback_keeps_the_prepared_statement():
    connection.close()
    with pytest.raises(RuntimeError), transaction.atomic():
        assert _run() == (42, "x")
        raise RuntimeError("rolled back")
    assert len(_prepared_here()) == 1
    with CaptureQueriesContext(connection) as captured:
        assert _run() == (42, "x")
    assert _words(captured) == ["EXECUTE"]
    assert len(_prepared_here()) == 1


def test_off_by_setting_the_statement_goes_as_it_is():
    connection.close()
    with override_settings(POINTS_PREPARED_STATEMENTS=False), CaptureQueriesContext(connection) as captured:
        assert _run() == (42, "x")
        assert credit("alice", 5).transaction.balance_after == 5
        assert credit("alice", 6).transaction.balance_after == 11
    assert "EXECUTE" not in _words(captured)
    assert _prepared_here() == []
    assert totals("alice") == (11, 0, 11)
    assert_ledger_ok()


def test_errors_are_djangos_as_for_any_statement():
    credit("alice", 5, external_id="taken")
    alice_txn = Transaction.objects.get(external_id="taken")
    sql = "INSERT INTO points_transaction (id, kind, source, external_id, request_hash, account_id, amount, reason, metadata, created_at) SELECT gen_random_uuid(), kind, source, external_id, request_hash, account_id, amount, reason, metadata, created_at FROM points_transaction WHERE id = %s"  # noqa: E501
    with pytest.raises(IntegrityError), transaction.atomic():
        _run(sql, [alice_txn.pk])
    assert Transaction.objects.filter(external_id="taken").count() == 1


def test_a_wrong_number_of_parameters_is_refused_before_anything_is_sent():
    with pytest.raises(ValueError, match="2 placeholders"):
        _run(params=(1,))


def test_an_error_while_preparing_is_djangos_too():
    from django.db import ProgrammingError

    with pytest.raises(ProgrammingError):
        _run("SELECT %s FROM no_such_table", [1])
    assert _run() == (42, "x")  # the connection goes on
