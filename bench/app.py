"""The scratch application database: migrated, demo rules loaded, one service client with every scope."""

from __future__ import annotations

import subprocess

from .common import APP_DB, BIN, ROOT, BenchError, app_environment, database_recreate, log
from .http import SOURCE

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
    return key
