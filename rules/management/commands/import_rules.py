import sys

from django.core.management.base import BaseCommand, CommandError

from config.api.jsonbody import JSONInputError, strict_json_loads
from rules.services import RulesImportError, rules_import


class Command(BaseCommand):
    help = (
        'Import a JSON rules file {"rules": [...]}: each rule is created, replaced (a new version) or left '
        "unchanged. Everything is validated first; if any rule is refused, nothing is written and the "
        "command exits non-zero."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="Path of the rules file ('-' reads standard input).")
        parser.add_argument("--dry-run", action="store_true", help="Validate and report only; write nothing.")

    def handle(self, *args, file, dry_run, **options):
        try:
            if file == "-":
                payload = strict_json_loads(sys.stdin.buffer.read())
            else:
                with open(file, "rb") as handle:
                    payload = strict_json_loads(handle.read())
        except OSError as exc:
            raise CommandError(f"Cannot read {file}: {exc.strerror or exc}") from exc
        except JSONInputError as exc:
            raise CommandError(f"{file} is not valid JSON for a rules file: {exc}") from exc

        try:
            report = rules_import(payload=payload, dry_run=dry_run)
        except RulesImportError as exc:
            for line in exc.report.lines():
                self.stderr.write(line)
            raise CommandError(str(exc)) from exc
        for line in report.lines():
            self.stdout.write(line)
