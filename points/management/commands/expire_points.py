from django.core.management.base import BaseCommand

from points.expiry import lots_expire_due


class Command(BaseCommand):
    help = (
        "Expire the remainder of every lot past its expiry (kind 'points_expiry'), sparing what active holds "
        "need. Safe to run beside Celery beat's periodic run."
    )

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=1000, help="Lots expired per transaction (default 1000).")

    def handle(self, *args, batch_size, **options):
        def progress(run):
            self.stdout.write(f"... {run.expired_lots} lot(s), {run.expired_points} point(s) expired so far")

        run = lots_expire_due(batch_size=max(1, batch_size), progress=progress)
        self.stdout.write(
            f"Expired {run.expired_lots} lot(s), {run.expired_points} point(s); skipped {run.skipped} (logged)."
        )
