"""The ledger's own idempotency namespaces are out of clients' reach, and the hold-expiry task gets
past a hold it cannot expire (SPEC §9)."""

import logging
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from points import services, tasks
from points.models import Hold, ServiceClient, Transaction
from points.namespaces import internal_sources

from .conftest import assert_ledger_ok, credit, hold

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("name", ["connect", "staff", "system", "SYSTEM", "Connect"])
def test_create_service_client_refuses_the_ledgers_names(name):
    with pytest.raises(CommandError, match="reserved for the ledger"):
        call_command("create_service_client", name, "--scopes", "points:credit", stdout=StringIO())
    assert not ServiceClient.objects.exists()


@pytest.mark.parametrize("name", [" quest", "quest\n", "a\x00b"])
def test_create_service_client_refuses_names_it_would_have_to_alter(name):
    with pytest.raises(CommandError):
        call_command("create_service_client", name, "--scopes", "points:credit", stdout=StringIO())
    assert not ServiceClient.objects.exists()


def test_connects_ledger_source_is_an_internal_name(settings):
    settings.CONNECT_LEDGER_SOURCE = "connect_rewards"
    assert internal_sources() == {"staff", "system", "connect_rewards"}
    with pytest.raises(CommandError, match="reserved"):
        call_command("create_service_client", "connect_rewards", "--scopes", "points:credit", stdout=StringIO())


@pytest.mark.parametrize("run", ["task", "command"])
def test_hold_expiry_skips_and_logs_a_hold_it_cannot_expire_and_expires_the_others(run, caplog):
    credit("alice", 100)
    holds = [hold("alice", 10).transaction.hold_id for _ in range(3)]
    Hold.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    blocked = sorted(holds, key=lambda pk: Hold.objects.get(pk=pk).expires_at)[0]
    # What a client named "system" could once do: take the expiry's own idempotency key first.
    services.account_credit(source="system", external_id=f"expiry:{blocked}", user_id="mallory", amount=1)

    with caplog.at_level(logging.ERROR, logger="points.services"):
        if run == "task":
            assert tasks.expire_holds() == 2
        else:
            out = StringIO()
            call_command("expire_holds", stdout=out)
            assert "Expired 2 hold(s)." in out.getvalue()

    statuses = dict(Hold.objects.values_list("pk", "status"))
    assert statuses.pop(blocked) == Hold.Status.ACTIVE
    assert set(statuses.values()) == {Hold.Status.EXPIRED}
    assert Transaction.objects.filter(kind=Transaction.Kind.EXPIRY).count() == 2
    assert [record.getMessage() for record in caplog.records] == ["hold expiry skipped"]
    assert caplog.records[0].hold_id == str(blocked)
    assert services.holds_expire_due() == 0  # a later run skips it again, and stops
    assert_ledger_ok()
