"""The ledger's raw SQL statements are templates: ``ledger_sql`` fills in the tables' quoted names and
the columns a statement writes, once per template and column list."""

import functools

from django.db import connection

from .models import Account, Entry, Hold, Lot, LotUse, Transaction


@functools.cache
def ledger_sql(template: str, columns: tuple[str, ...] = (), hold_columns: tuple[str, ...] = ()) -> str:
    """A statement template with the ledger's table names and the given Transaction (and Hold) columns filled in."""
    quote = connection.ops.quote_name
    return template.format(
        accounts=quote(Account._meta.db_table),
        transactions=quote(Transaction._meta.db_table),
        entries=quote(Entry._meta.db_table),
        holds=quote(Hold._meta.db_table),
        lots=quote(Lot._meta.db_table),
        uses=quote(LotUse._meta.db_table),
        account_column=quote(Transaction._meta.get_field("account").column),
        hold_account_column=quote(Hold._meta.get_field("account").column),
        columns=", ".join(columns),
        placeholders=", ".join(["%s"] * len(columns)),
        hold_columns=", ".join(hold_columns),
        hold_placeholders=", ".join(["%s"] * len(hold_columns)),
    )
