"""The embedded default of `make run` (SQLite, in-process tasks) moves points correctly.

The ledger's hot path is PostgreSQL-only SQL; on SQLite every operation takes the portable
stepwise path. This runs that path end to end in a fresh SQLite database, in its own process.
"""

import json

from .test_deploy import _manage

SCRIPT = r"""
import json
import django
django.setup()
from django.core.management import call_command
from connect.models import RewardAction
from connect.services import event_ingest
from points import services
from points.errors import IdempotencyConflict, InsufficientFunds

call_command("migrate", verbosity=0)
call_command("bootstrap_embedded", verbosity=0)
out = {}
ingested = event_ingest(client_name="quest_service", data={
    "external_id": "q-1", "event_type": "quest.completed", "actor_user_id": "player",
    "primary_subject_user_id": "author", "context": {"base_reward_points": 40, "total_quests_completed": 1},
    "occurred_at": None,
})
stored = RewardAction.objects.filter(event_id=ingested.event.pk)
out["actions"] = sorted((a.target_user_id, a.amount) for a in stored)
out["statuses"] = sorted({a.status for a in stored})
first = services.account_credit(source="s", external_id="c-1", user_id="player", amount=10, metadata={"k": 1})
again = services.account_credit(source="s", external_id="c-1", user_id="player", amount=10, metadata={"k": 1})
out["replay"] = [first.replayed, again.replayed, str(first.transaction.pk) == str(again.transaction.pk)]
try:
    services.account_credit(source="s", external_id="c-1", user_id="player", amount=11)
except IdempotencyConflict:
    out["conflict"] = True
try:
    services.account_debit(source="s", external_id="d-1", user_id="player", amount=10**6)
except InsufficientFunds:
    out["refused"] = True
out["debit"] = services.account_debit(source="s", external_id="d-1", user_id="player", amount=5).transaction.balance_after
held = services.hold_create(source="s", external_id="h-1", user_id="player", amount=5)
out["capture"] = services.hold_capture(source="s", external_id="hc-1", hold_id=held.transaction.hold_id).transaction.balance_after
from datetime import timedelta
from django.utils import timezone
from points.batch import ledger_batch
from points.expiry import lots_expire_due
from points.models import Lot
from points.reversals import transaction_reverse
dated = services.account_credit(
    source="s", external_id="c-2", user_id="player", amount=30, expires_at=timezone.now() + timedelta(days=1)
)
out["reverse"] = transaction_reverse(source="s", external_id="r-1", transaction_id=first.transaction.pk, amount=4).transaction.balance_after
Lot.objects.filter(transaction_id=dated.transaction.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
out["expired"] = lots_expire_due().expired_points
out["batch"] = [item.status for item in ledger_batch(source="s", operations=[
    {"op": "credit", "external_id": "b-1", "user_id": "player", "amount": 3},
    {"op": "debit", "external_id": "b-2", "user_id": "player", "amount": 10**6},
])]
call_command("verify_ledger", verbosity=0)
print("RESULT " + json.dumps(out))
"""


def test_the_embedded_sqlite_default_ingests_and_keeps_the_ledger_consistent(tmp_path):
    result = _manage(
        python=SCRIPT,
        DATABASE_URL=f"sqlite:///{tmp_path / 'embedded.sqlite3'}",
        DEBUG="1",
        CELERY_BROKER_URL="",
    )

    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    out = json.loads(line.removeprefix("RESULT "))
    assert out["actions"] == [["author", 20], ["player", 40]]
    assert out["statuses"] == ["completed"]  # dispatched in-process on commit, credited through the ledger
    assert out["replay"] == [False, True, True]
    assert out["conflict"] is True and out["refused"] is True
    assert out["debit"] == 40 + 10 - 5
    assert out["capture"] == 40 + 10 - 5 - 5
    assert out["reverse"] == 40 + 10 - 5 - 5 + 30 - 4
    assert out["expired"] == 30
    assert out["batch"] == [201, 422]
