import secrets

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "First-run setup of the embedded default: an admin login (printed once) and the demo rules."

    def handle(self, *args, **options):
        User = get_user_model()
        if not User.objects.filter(is_superuser=True).exists():
            password = secrets.token_urlsafe(12)
            User.objects.create_superuser("admin", "admin@example.com", password)
            self.stdout.write(self.style.WARNING("Created the admin login (shown only this once):"))
            self.stdout.write(f"    username: admin\n    password: {password}")
        self._load_demo_rules()

    def _load_demo_rules(self):
        try:
            from rules.models import Rule
        except ImportError:
            return
        if Rule.objects.exists():
            return
        from rules.demo import DEMO_RULES_PATH

        call_command("import_rules", str(DEMO_RULES_PATH), stdout=self.stdout)
