import time

from django.conf import settings
from django.core.management.base import BaseCommand

from connect.doorbell import reward_actions_sweep
from connect.webhooks.services import webhook_deliveries_drain
from points.services import holds_expire_due


class Command(BaseCommand):
    help = (
        "The periodic work of Celery beat for the embedded default (no broker): sweep due reward "
        "actions, expire holds and send due webhook deliveries every SWEEPER_INTERVAL_SECONDS. `make run` starts "
        "it beside the server."
    )

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="Run one round and exit.")

    def handle(self, *args, once, **options):
        interval = max(1.0, float(settings.SWEEPER_INTERVAL_SECONDS))
        while True:
            swept = reward_actions_sweep()
            expired = holds_expire_due()
            webhooks = webhook_deliveries_drain(max_seconds=interval)["claimed"]
            if swept or expired or webhooks or once:
                self.stdout.write(
                    f"embedded beat: re-enqueued {swept} action(s), expired {expired} hold(s), "
                    f"tried {webhooks} webhook delivery(ies)"
                )
            if once:
                return
            time.sleep(interval)
