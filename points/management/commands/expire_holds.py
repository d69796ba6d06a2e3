from django.core.management.base import BaseCommand

from points.services import holds_expire_due


class Command(BaseCommand):
    help = "Release every hold past its expiry (kind 'expiry'). Celery beat runs the same periodically."

    def handle(self, *args, **options):
        count = holds_expire_due()
        self.stdout.write(f"Expired {count} hold(s).")
