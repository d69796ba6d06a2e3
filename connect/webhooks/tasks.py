"""The webhook doorbell and beat sweep: one task that drains due deliveries."""

from celery import shared_task

from .services import webhook_deliveries_drain

# A drain stops taking new batches after DRAIN_SECONDS; one batch is bounded by the HTTP timeouts.
DRAIN_SECONDS = 50


@shared_task(acks_late=True, ignore_result=True, soft_time_limit=DRAIN_SECONDS + 60, time_limit=DRAIN_SECONDS + 90)
def webhooks_deliver_due() -> dict:
    """Rung after a commit that wrote deliveries, and by beat every WEBHOOK_SWEEP_INTERVAL_SECONDS
    (lost doorbells, due retries, claims of dead workers). Safe to run in parallel (SKIP LOCKED)."""
    return webhook_deliveries_drain(max_seconds=DRAIN_SECONDS)
