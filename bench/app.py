"""The scratch application database: migrated, demo rules loaded, one service client with every scope."""

from __future__ import annotations

import subprocess

from .common import APP_DB, BIN, ROOT, BenchError, app_environment, database_recreate, log
from .http import SOURCE, USERS

SCOPES = ["events:write", "events:read", "points:credit", "points:debit", "points:hold", "points:read"]


def _manage(*args: str) -> None:
    done = subprocess.run(
        [str(BIN / "python"), "manage.py", *args], cwd=ROOT, env=app_environment(), capture_output=True, text=True
    )
    if done.returncode != 0:
        raise BenchError(f"manage.py {' '.join(args)} failed: {done.stderr.strip()[-800:]}")


def app_prepare() -> str:
    """Create and migrate the scratch database; returns the API key of the benchmark's client."""
    database_recreate(APP_DB)
    log("app: migrating the scratch database")
    _manage("migrate", "--noinput")
    _manage("import_rules", "rules/demo_rules.json")
    from points.models import ServiceClient, ServiceClientKey

    from .ceiling import ceiling_table_ensure

    client = ServiceClient.objects.create(name=SOURCE, scopes=SCOPES)
    _, key = ServiceClientKey.objects.create_key(client=client, name="bench key")
    ceiling_table_ensure()
    _accounts_prepare()
    return key


def _accounts_prepare() -> None:
    """Open the account of every user the HTTP and end-to-end phases credit, with one point each.

    A user's first credit also creates the account (the ledger's slower, stepwise path); the timed
    phases measure the steady state, as the ledger phase does.
    """
    from points.services import account_credit

    users = [f"{prefix}-{n}" for n in range(USERS) for prefix in ("a", "s", "c")]
    log(f"app: opening {len(users)} accounts")
    for user in users:
        account_credit(source="bench_setup", external_id=f"open-{user}", user_id=user, amount=1)
