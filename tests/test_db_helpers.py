"""The single-statement write helpers the ledger and the event inbox share (config/db.py)."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from config.db import insert_rows, insert_unless_conflict, update_columns
from connect.models import EconomicEvent
from points.models import Account

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
