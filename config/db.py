"""Single-statement writes the ORM has no spelling for, on the default connection.

Each saves round trips on a hot path: a claim that is one ``INSERT ... ON CONFLICT DO NOTHING
RETURNING`` instead of a savepoint, an INSERT and a release; several rows in one INSERT that also
hands back their keys; an UPDATE of named columns without a queryset.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.db import connection
from django.db.models import Model


def column_values(instance: Model, *, exclude: Sequence[str] = ()) -> tuple[list[str], list]:
    """The instance's quoted columns and their database values, as an INSERT would write them.

    The pk is left out when the database assigns it, and so are the fields named in ``exclude``.
    """
    meta = type(instance)._meta
    columns, values = [], []
    for field in meta.concrete_fields:
        if (field.primary_key and instance.pk is None) or field.name in exclude:
            continue
        columns.append(connection.ops.quote_name(field.column))
        values.append(field.get_db_prep_save(field.pre_save(instance, add=True), connection))
    return columns, values


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
    quote = connection.ops.quote_name
    conflict = ", ".join(quote(meta.get_field(name).column) for name in conflict_fields)
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(values))}) "
        f"ON CONFLICT ({conflict}) DO NOTHING RETURNING {quote(meta.pk.column)}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        row = cursor.fetchone()
    if row is None:
        return False
    mark_saved(instance, row[0])
    return True


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
    meta = type(instance)._meta
    quote = connection.ops.quote_name
    fields = [meta.get_field(name) for name in field_names]
    assignments = ", ".join(f"{quote(field.column)} = %s" for field in fields)
    values = [field.get_db_prep_save(getattr(instance, field.attname), connection) for field in fields]
    sql = f"UPDATE {quote(meta.db_table)} SET {assignments} WHERE {quote(meta.pk.column)} = %s"
    with connection.cursor() as cursor:
        cursor.execute(sql, [*values, meta.pk.get_db_prep_value(instance.pk, connection)])
