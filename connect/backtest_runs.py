"""Backtests started from admin (SPEC §15): a BacktestRun row, a Celery task, a progress bar.

The run itself writes nothing but its own BacktestRun row (progress, then the report); the admin
keeps the last BACKTEST_KEEP_REPORTS runs.
"""

import logging
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from rules.models import RuleDraft

from .backtest import BacktestInvalid, backtest_run
from .models import BacktestRun

logger = logging.getLogger("connect.backtest")


@transaction.atomic
def backtest_start(
    *, since: datetime, until: datetime, user, draft: RuleDraft | None = None, payload: dict | None = None
) -> BacktestRun:
    """Record a backtest of ``draft`` (or of a rules file ``payload``) and run it in the background
    after commit. Deletes the runs beyond the newest BACKTEST_KEEP_REPORTS."""
    if draft is not None:
        payload = {"rules": [draft.data]}
    if payload is None:
        raise BacktestInvalid(["Give a draft or a rules file."])
    if since >= until:
        raise BacktestInvalid(["since must be before until."])
    run = BacktestRun.objects.create(draft=draft, rules=payload, since=since, until=until, created_by=user)
    keep = BacktestRun.objects.order_by("-created_at").values_list("pk", flat=True)[: settings.BACKTEST_KEEP_REPORTS]
    BacktestRun.objects.exclude(pk__in=list(keep)).delete()

    from .tasks import backtest_execute_task

    transaction.on_commit(lambda: backtest_execute_task.delay(str(run.pk)))
    return run


def backtest_execute(*, run_id) -> BacktestRun | None:
    """Run a queued backtest, recording its progress and then its report (or why it failed)."""
    claimed = BacktestRun.objects.filter(pk=run_id, status=BacktestRun.Status.QUEUED).update(
        status=BacktestRun.Status.RUNNING
    )
    if not claimed:
        return None
    run = BacktestRun.objects.get(pk=run_id)

    def progress(done: int, total: int) -> None:
        BacktestRun.objects.filter(pk=run_id).update(processed=done, total=total)

    try:
        report = backtest_run(payload=run.rules, since=run.since, until=run.until, progress=progress)
    except BacktestInvalid as exc:
        outcome = {"status": BacktestRun.Status.FAILED, "error": "; ".join(exc.errors)}
    except Exception as exc:
        logger.exception("backtest failed", extra={"backtest_id": str(run_id)})
        outcome = {"status": BacktestRun.Status.FAILED, "error": f"{type(exc).__name__}: {exc}"}
    else:
        outcome = {"status": BacktestRun.Status.DONE, "report": report}
    BacktestRun.objects.filter(pk=run_id).update(finished_at=timezone.now(), **outcome)
    return BacktestRun.objects.get(pk=run_id)
