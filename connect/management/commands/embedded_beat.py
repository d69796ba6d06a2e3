import time

from django.conf import settings
from django.core.management.base import BaseCommand

from connect.doorbell import reward_actions_sweep
from connect.webhooks.expiring import points_expiring_announce
from connect.webhooks.services import webhook_deliveries_drain
from points.expiry import lots_expire_due
from points.services import holds_expire_due


class Command(BaseCommand):
    help = (
        "The periodic work of Celery beat for the embedded default (no broker): sweep due reward "
        "actions, expire holds and send due webhook deliveries every SWEEPER_INTERVAL_SECONDS; expire "
        "due points and announce points expiring soon (points.expiring) every POINTS_EXPIRY_INTERVAL_SECONDS. "
        "`make run` starts it beside the server."
    )

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="Run one round and exit.")

    def handle(self, *args, once, **options):
        interval = max(1.0, float(settings.SWEEPER_INTERVAL_SECONDS))
        expiry_interval = max(1.0, float(settings.POINTS_EXPIRY_INTERVAL_SECONDS))
        next_expiry = time.monotonic()
        while True:
            swept = reward_actions_sweep()
            expired = holds_expire_due()
            lots = announced = 0
            if time.monotonic() >= next_expiry:
                next_expiry = time.monotonic() + expiry_interval
                lots = lots_expire_due().expired_lots
                announced = points_expiring_announce()
            # after the announcements, so the round sends what it has just written
            webhooks = webhook_deliveries_drain(max_seconds=interval)["claimed"]
            if swept or expired or lots or announced or webhooks or once:
                self.stdout.write(
                    f"embedded beat: re-enqueued {swept} action(s), expired {expired} hold(s) and {lots} "
                    f"lot(s), offered {announced} expiry notice(s), tried {webhooks} webhook delivery(ies)"
                )
            if once:
                return
            time.sleep(interval)
