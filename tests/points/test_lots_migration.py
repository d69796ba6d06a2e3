"""The upgrade to lots on a database made by the migrations before it: every existing balance gets
one never-expiring lot of its size, so nothing is lost or invented, and the way back works too."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from points.verification import ledger_verify

BEFORE = [("points", "0004_admin_indexes")]
AFTER = [("points", "0007_open_lots_for_existing_balances")]

pytestmark = pytest.mark.django_db(transaction=True)


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.mark.ledger_broken  # balances written as before lots, without their entries
def test_the_upgrade_opens_one_never_expiring_lot_per_balance_and_loses_nothing():
    try:
        old = _migrate(BEFORE)
        Account = old.get_model("points", "Account")
        Account.objects.create(kind="user", user_id="alice", balance=150, held=40)
        Account.objects.create(kind="user", user_id="bob", balance=0, held=0)
        Account.objects.create(kind="user", user_id="carol", balance=7, held=0)

        new = _migrate(AFTER)

        Lot = new.get_model("points", "Lot")
        lots = sorted(
            Lot.objects.values_list("account__user_id", "amount", "remaining", "expires_at", "transaction_id")
        )
        assert lots == [("alice", 150, 150, None, None), ("carol", 7, 7, None, None)]
        assert new.get_model("points", "Account").objects.get(user_id="alice").balance == 150
        broken = {check.name for check in ledger_verify() if not check.ok}
        assert "lots_match_balance" not in broken  # (entries were not made for these hand-made balances)

        # Down and up again: the lots are removed and opened anew, still one per balance.
        _migrate(BEFORE)
        again = _migrate(AFTER)
        assert again.get_model("points", "Lot").objects.count() == 2
    finally:
        _migrate(_latest())


def _latest():
    executor = MigrationExecutor(connection)
    return executor.loader.graph.leaf_nodes()
