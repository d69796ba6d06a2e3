from django.core.management.base import BaseCommand, CommandError

from points.verification import ledger_verify


class Command(BaseCommand):
    help = "Check every ledger invariant; exits non-zero and names each broken one."

    def handle(self, *args, **options):
        checks = ledger_verify()
        for check in checks:
            status = "ok" if check.ok else "BROKEN"
            self.stdout.write(f"{status:6} {check.name}: {check.description}")
            for offender in check.offenders:
                self.stdout.write(f"       - {offender}")
        broken = [check.name for check in checks if not check.ok]
        if broken:
            raise CommandError(f"Ledger invariants broken: {', '.join(broken)}")
        self.stdout.write(self.style.SUCCESS("Ledger verified: all invariants hold."))
