"""The ledger's hot statements, parsed and planned by PostgreSQL once per connection.

Django's psycopg cursors bind parameters on the client, so PostgreSQL parses, analyses and plans
every statement it receives; for the ledger's one-statement operations (data-modifying CTEs over
four or five tables) that is about as much server CPU as running them. ``execute`` sends such a
statement once per connection as SQL ``PREPARE`` (connection set-up, sent on the psycopg connection
itself) and then only ``EXECUTE name(values)``, plain SQL through Django's own cursor, so query
logging, execute wrappers and error translation are as for any statement. A prepared statement
lasts as long as the session (a rollback keeps it), and PostgreSQL re-plans it by itself after a
schema change.

``POINTS_PREPARED_STATEMENTS = False`` (environment ``POINTS_PREPARED_STATEMENTS=0``) sends the
statements as they are, for a connection pooler in transaction mode, where the next statement may
reach another server session. Other databases always get them as they are.
"""

from __future__ import annotations

import functools
import hashlib
import re
import weakref

from django.conf import settings
from django.db import connection

# Prepared statement names per psycopg connection: a connection Django replaces (closed, broken,
# too old) starts with none.
_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def enabled() -> bool:
    return connection.vendor == "postgresql" and getattr(settings, "POINTS_PREPARED_STATEMENTS", True)


def execute(cursor, sql: str, params) -> None:
    """Run ``sql`` (``%s`` placeholders, no literal ``%``) with ``params`` on ``cursor``, a cursor of
    the default connection, through a statement prepared once per connection when ``enabled()``."""
    if not enabled():
        cursor.execute(sql, params)
        return
    name, prepare_sql, count = _prepared_form(sql)
    if len(params) != count:
        raise ValueError(f"{count} placeholders, {len(params)} parameters")
    raw = connection.connection
    names = _prepared.get(raw)
    if names is None:
        names = _prepared[raw] = set()
    if name not in names:
        # Set-up of the connection, as Django's own (time zone, role): sent on the psycopg connection
        # itself, so it is not one of the operation's statements in query logs and counts.
        # Its errors (a lost connection) are translated into Django's, as for any statement.
        with connection.wrap_database_errors, raw.cursor() as raw_cursor:
            raw_cursor.execute(prepare_sql)
        names.add(name)
    cursor.execute(_execute_sql(name, count), params)


@functools.cache
def _prepared_form(sql: str) -> tuple[str, str, int]:
    """The statement's name (from its text, so one text is one prepared statement), its PREPARE and
    its number of parameters."""
    count = 0

    def numbered(_match) -> str:
        nonlocal count
        count += 1
        return f"${count}"

    text = re.sub(r"%s", numbered, sql)
    name = "points_" + hashlib.sha256(sql.encode()).hexdigest()[:24]
    return name, f"PREPARE {name} AS {text}", count


@functools.cache
def _execute_sql(name: str, count: int) -> str:
    return f"EXECUTE {name}({', '.join(['%s'] * count)})" if count else f"EXECUTE {name}"


def forget(raw_connection=None) -> None:
    """Forget what was prepared on a connection (all of them by default), e.g. after ``DEALLOCATE ALL``."""
    if raw_connection is None:
        _prepared.clear()
    else:
        _prepared.pop(raw_connection, None)
