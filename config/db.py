"""Single-statement reads and writes the ORM has no spelling for, on the default connection.

Each saves round trips or ORM work on a hot path: a claim that is one ``INSERT ... ON CONFLICT DO
NOTHING RETURNING`` instead of a savepoint, an INSERT and a release; the same claim with the rows
that depend on it, in one statement that in autocommit mode is also its own transaction; several
rows in one INSERT that also hands back their keys; an UPDATE of named columns, or one guarded by
the row's current values, without a queryset.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from decimal import Decimal

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import CharField, Field, Model


def column_values(instance: Model, *, exclude: Sequence[str] = ()) -> tuple[list[str], list]:
    """The instance's quoted columns and their database values, as an INSERT would write them.

    The pk is left out when the database assigns it, and so are the fields named in ``exclude``.
    """
    db = connections[DEFAULT_DB_ALIAS]  # the wrapper itself: each use of the proxy is a lookup
    columns, values = [], []
    for field, column in _insert_columns(type(instance)):
        if (field.primary_key and instance.pk is None) or field.name in exclude:
            continue
        columns.append(column)
        values.append(field.get_db_prep_save(field.pre_save(instance, add=True), db))
    return columns, values


@functools.cache
def _insert_columns(model: type[Model]) -> tuple[tuple[Field, str], ...]:
    """Each concrete field of ``model`` with its quoted column, worked out once per process."""
    quote = connection.ops.quote_name
    return tuple((field, quote(field.column)) for field in model._meta.concrete_fields)


def mark_saved(instance: Model, pk=None) -> None:
    """Let the ORM treat an instance written by one of these statements as loaded from the database."""
    if pk is not None:
        instance.pk = pk
    instance._state.adding = False
    instance._state.db = connection.alias


def insert_unless_conflict(instance: Model, conflict_fields: Sequence[str]) -> bool:
    """INSERT the instance unless a row with the same ``conflict_fields`` (a unique constraint) exists.

    True when this call inserted it (the instance is then saved, its pk set). False when the row
    already exists; a concurrent insert of the same key that has not committed yet is waited for
    first, as with a plain INSERT. No exception, so the transaction stays usable without a savepoint.
    """
    meta = type(instance)._meta
    columns, values = column_values(instance)
    sql = _insert_unless_conflict_sql(meta, columns, conflict_fields, connection.ops.quote_name(meta.pk.column))
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        row = cursor.fetchone()
    if row is None:
        return False
    mark_saved(instance, row[0])
    return True


def insert_with_dependents_unless_conflict(
    instance: Model, conflict_fields: Sequence[str], dependents: Sequence[Model]
) -> bool:
    """Like ``insert_unless_conflict``, and in the same statement INSERT ``dependents`` (rows of one
    model that refer to ``instance``) only if ``instance`` was inserted. PostgreSQL only.

    One statement (data-modifying CTEs), so in autocommit mode the parent and its rows commit together
    or not at all, with no BEGIN or COMMIT round trip. Every pk must already be set (a client-side
    default such as a UUID): nothing is read back. True when this call inserted them all (the
    instances are then saved); False when the parent's key already exists, and nothing was written.

    A NULL, an empty text and an integer zero (most of a new row's unset columns) go into the text
    rather than as parameters: the statement has fewer parameters, so psycopg keeps its parsed form
    (at most 50 parameters) and there are fewer values to send; a connection that runs the same text
    again prepares it (``DB_PREPARED_STATEMENTS``).
    """
    quote = connection.ops.quote_name
    columns, values = column_values(instance)
    placeholders = [_literal_or_placeholder(value) for value in values]
    sql = "WITH parent AS ({})".format(
        _insert_unless_conflict_sql(type(instance)._meta, columns, conflict_fields, "1", placeholders)
    )
    params = [value for value in values if _literal(value) is None]
    if dependents:
        child_meta = type(dependents[0])._meta
        rows = [column_values(child) for child in dependents]
        child_columns = rows[0][0]
        # A VALUES list in a subquery does not take the target columns' types, so each value is cast
        # to its column's type (a NULL or a text literal would otherwise not go into uuid, jsonb ...).
        casts = _casts(type(dependents[0]), tuple(child_columns))
        row_texts = [
            "(" + ", ".join(cast.format(_literal_or_placeholder(v)) for v, cast in zip(row, casts, strict=True)) + ")"
            for _, row in rows
        ]
        sql += (
            f", dependents AS (INSERT INTO {quote(child_meta.db_table)} ({', '.join(child_columns)}) "
            f"SELECT * FROM (VALUES {', '.join(row_texts)}) AS row_values "
            f"WHERE EXISTS (SELECT 1 FROM parent) RETURNING 1)"
        )
        params += [value for _, row in rows for value in row if _literal(value) is None]
        sql += " SELECT (SELECT count(*) FROM parent), (SELECT count(*) FROM dependents)"
    else:
        sql += " SELECT (SELECT count(*) FROM parent), 0"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        inserted, dependents_inserted = cursor.fetchone()
    if not inserted:
        return False
    if dependents_inserted != len(dependents):
        raise RuntimeError(f"inserted {dependents_inserted} of {len(dependents)} dependent rows")
    for row in (instance, *dependents):
        mark_saved(row)
    return True


def _literal(value) -> str | None:
    """The SQL text of a value written into a statement instead of sent as a parameter, or None.

    Only values whose text never varies: NULL, the empty text and the integer zero (not False, an
    int too, which a boolean column would not take as 0).
    """
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "''" if value == "" else None
    if isinstance(value, int) and not isinstance(value, bool):
        return "0" if value == 0 else None
    return None


def _literal_or_placeholder(value) -> str:
    literal = _literal(value)
    return "%s" if literal is None else literal


def _insert_unless_conflict_sql(
    meta, columns: Sequence[str], conflict_fields: Sequence[str], returning: str, placeholders: Sequence[str] = ()
) -> str:
    quote = connection.ops.quote_name
    conflict = ", ".join(quote(meta.get_field(name).column) for name in conflict_fields)
    return (
        f"INSERT INTO {quote(meta.db_table)} ({', '.join(columns)}) "
        f"VALUES ({', '.join(placeholders or ['%s'] * len(columns))}) "
        f"ON CONFLICT ({conflict}) DO NOTHING RETURNING {returning}"
    )


@functools.cache
def _casts(model: type[Model], quoted_columns: tuple[str, ...]) -> list[str]:
    """``CAST({} AS uuid)``, ``CAST({} AS text)`` ... for these columns of ``model``, to be formatted
    with a placeholder or a literal.

    Text goes in as ``text``, not as the column's ``varchar(n)``: an explicit cast to ``varchar(n)``
    silently cuts a longer value, where the INSERT's own conversion refuses it, as a plain INSERT does.
    """
    by_column = {connection.ops.quote_name(field.column): field for field in model._meta.concrete_fields}
    return [f"CAST({{}} AS {_cast_type(by_column[column])})" for column in quoted_columns]


def _cast_type(field: Field) -> str:
    if isinstance(field, CharField):
        return "text"
    return field.db_type(connection)


def insert_rows(instances: Sequence[Model]) -> None:
    """INSERT several instances of one model in one statement and set their database-assigned pks."""
    if not instances:
        return
    meta = type(instances[0])._meta
    quote = connection.ops.quote_name
    rows = [column_values(instance) for instance in instances]
    columns = rows[0][0]
    placeholders = "(" + ", ".join(["%s"] * len(columns)) + ")"
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({', '.join(columns)}) VALUES "
        f"{', '.join([placeholders] * len(rows))} RETURNING {quote(meta.pk.column)}"
    )
    params = [value for _, values in rows for value in values]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        pks = [row[0] for row in cursor.fetchall()]
    # PostgreSQL returns the rows of a multi-row VALUES in the order they were given.
    for instance, pk in zip(instances, pks, strict=True):
        mark_saved(instance, pk)


def update_columns(instance: Model, field_names: Sequence[str]) -> None:
    """UPDATE the named fields of a saved instance, by pk, in one statement without signals."""
    fields = [type(instance)._meta.get_field(name) for name in field_names]
    update_where(
        type(instance), instance.pk, {field.name: getattr(instance, field.attname) for field in fields}, where={}
    )


def update_where(model: type[Model], pk, values: Mapping[str, object], *, where: Mapping[str, object]) -> int:
    """UPDATE the row ``pk`` of ``model`` with ``values`` (field name -> value) only if its fields
    also equal ``where``; returns the number of rows changed (0 or 1). No signals, no queryset: the
    statement text is built once per shape (model, fields set, fields compared)."""
    sql, set_fields, where_fields, pk_field = _update_where_sql(model, tuple(values), tuple(where))
    db = connections[DEFAULT_DB_ALIAS]
    params = [field.get_db_prep_save(values[field.name], db) for field in set_fields]
    params.append(pk_field.get_db_prep_value(pk, db))
    params += [field.get_db_prep_value(where[field.name], db) for field in where_fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


@functools.cache
def _update_where_sql(model: type[Model], set_names: tuple[str, ...], where_names: tuple[str, ...]):
    meta = model._meta
    quote = connection.ops.quote_name
    set_fields = [meta.get_field(name) for name in set_names]
    where_fields = [meta.get_field(name) for name in where_names]
    assignments = ", ".join(f"{quote(field.column)} = %s" for field in set_fields)
    conditions = "".join(f" AND {quote(field.column)} = %s" for field in where_fields)
    sql = f"UPDATE {quote(meta.db_table)} SET {assignments} WHERE {quote(meta.pk.column)} = %s{conditions}"
    return sql, set_fields, where_fields, meta.pk


def update_rows_where(instances: Sequence[Model], fields: Sequence[str], *, where: Mapping[str, object]) -> set:
    """UPDATE the named fields of several saved instances of one model, each row only if its fields
    equal ``where[name](instance)`` (a function of the instance, e.g. the attempt a run claimed);
    returns the pks of the rows changed. On PostgreSQL one ``UPDATE ... FROM jsonb_to_recordset(...)``
    for all of them, so the statement's text is the same whatever the number of rows;
    elsewhere one guarded UPDATE per row."""
    if not instances:
        return set()
    model = type(instances[0])
    db = connections[DEFAULT_DB_ALIAS]
    if db.vendor != "postgresql":
        changed = set()
        for instance in instances:
            values = {name: getattr(instance, name) for name in fields}
            guard = {name: value_of(instance) for name, value_of in where.items()}
            if update_where(model, instance.pk, values, where=guard):
                changed.add(instance.pk)
        return changed
    sql, set_fields, where_fields, pk_field = _update_rows_where_sql(model, tuple(fields), tuple(where))
    rows = []
    for instance in instances:
        values = [pk_field.get_prep_value(instance.pk)]
        values += [field.get_prep_value(getattr(instance, field.attname)) for field in set_fields]
        values += [
            field.get_prep_value(value_of(instance))
            for field, value_of in zip(where_fields, where.values(), strict=True)
        ]
        rows.append({f"c{index}": value for index, value in enumerate(values)})
    with connection.cursor() as cursor:
        cursor.execute(sql, [json_rows(rows)])
        return {pk for (pk,) in cursor.fetchall()}


@functools.cache
def _update_rows_where_sql(model: type[Model], set_names: tuple[str, ...], where_names: tuple[str, ...]):
    """The rows go in as one JSON document read by ``jsonb_to_recordset``: one parameter, encoded by
    the json module, where an array per column makes the driver quote and escape every element
    (every quote of a JSON column's value among them)."""
    meta = model._meta
    quote = connection.ops.quote_name
    set_fields = [meta.get_field(name) for name in set_names]
    where_fields = [meta.get_field(name) for name in where_names]
    columns = [meta.pk, *set_fields, *where_fields]
    record = ", ".join(f"c{index} {_cast_type(field)}" for index, field in enumerate(columns))
    table = quote(meta.db_table)
    assignments = ", ".join(f"{quote(field.column)} = v.c{index + 1}" for index, field in enumerate(set_fields))
    conditions = "".join(
        f" AND {table}.{quote(field.column)} = v.c{index + 1 + len(set_fields)}"
        for index, field in enumerate(where_fields)
    )
    sql = (
        f"UPDATE {table} SET {assignments} FROM jsonb_to_recordset(CAST(%s AS jsonb)) AS v({record}) "
        f"WHERE {table}.{quote(meta.pk.column)} = v.c0{conditions} RETURNING {table}.{quote(meta.pk.column)}"
    )
    return sql, set_fields, where_fields, meta.pk


def json_rows(rows: list[dict]) -> str:
    """Rows as one JSON document for ``jsonb_to_recordset``: moments, UUIDs and decimals as PostgreSQL
    reads them back from text, anything else the json module does not write refused."""
    return json.dumps(rows, default=_json_value, allow_nan=False)


def _json_value(value):
    """A column value the json module does not write itself, as PostgreSQL reads it back from text."""
    if isinstance(value, datetime | date | time | uuid.UUID | Decimal):
        return value.isoformat() if hasattr(value, "isoformat") else str(value)
    raise TypeError(f"{type(value).__name__} is not a column value update_rows_where can send")
