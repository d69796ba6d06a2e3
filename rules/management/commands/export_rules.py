import json

from django.core.management.base import BaseCommand, CommandError

from rules.services import UnknownRuleCodes, rules_export


class Command(BaseCommand):
    help = 'Print rules as a JSON rules file {"rules": [...]} (all rules, or those named with --code).'

    def add_arguments(self, parser):
        parser.add_argument(
            "--code",
            dest="codes",
            action="extend",
            nargs="+",
            metavar="CODE",
            help="Export only these rules (repeatable).",
        )

    def handle(self, *args, codes=None, **options):
        try:
            payload = rules_export(codes=codes)
        except UnknownRuleCodes as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False))
