from django.core.management.base import BaseCommand

from connect.doorbell import SWEEP_LIMIT, reward_actions_sweep


class Command(BaseCommand):
    help = (
        "Re-enqueue reward actions left pending/dispatched past SWEEPER_STALE_SECONDS whose next attempt is due "
        "(what the Celery beat sweeper does every SWEEPER_INTERVAL_SECONDS)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--limit", type=int, default=SWEEP_LIMIT, help="At most this many per batch.")
        parser.add_argument("--all", action="store_true", help="Repeat batches until nothing is left to re-enqueue.")

    def handle(self, *args, **options):
        limit = max(1, options["limit"])
        total = 0
        while True:
            count = reward_actions_sweep(limit=limit)
            total += count
            if not options["all"] or count < limit:
                break
        self.stdout.write(f"Re-enqueued {total} reward action(s).")
