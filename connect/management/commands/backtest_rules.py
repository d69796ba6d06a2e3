import json
import sys
from datetime import UTC, datetime, time

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_date, parse_datetime

from connect.backtest import BacktestInvalid, backtest_run, report_lines


def _moment(value: str) -> datetime:
    """An RFC 3339 date-time (UTC when it has no offset), or a date meaning its midnight UTC."""
    parsed = parse_datetime(value)
    if parsed is None:
        day = parse_date(value)
        if day is None:
            raise ValueError(value)
        parsed = datetime.combine(day, time.min)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = (
        "Replay the events received in [--since, --until) against the rules of a rules file, writing nothing, "
        "and compare with what production stored. The report goes to stdout, progress to stderr."
    )

    def add_arguments(self, parser):
        parser.add_argument("rules_file", help='A rules file {"rules": [...]}, as export_rules writes; - for stdin.')
        parser.add_argument("--since", required=True, help="Start (inclusive): a date or an RFC 3339 date-time.")
        parser.add_argument("--until", required=True, help="End (exclusive): a date or an RFC 3339 date-time.")
        parser.add_argument("--format", choices=("table", "json"), default="table")
        parser.add_argument(
            "--only", action="store_true", help="Run only the file's rules (default: with production's other rules)."
        )

    def handle(self, *args, **options):
        try:
            since, until = _moment(options["since"]), _moment(options["until"])
        except ValueError as exc:
            raise CommandError(f"Not a date or date-time: {exc}") from exc
        try:
            source = sys.stdin if options["rules_file"] == "-" else open(options["rules_file"], encoding="utf-8")
            with source:
                payload = json.load(source)
        except (OSError, ValueError) as exc:
            raise CommandError(f"Cannot read the rules file: {exc}") from exc

        def progress(done: int, total: int) -> None:
            self.stderr.write(f"\rbacktest: {done}/{total} events", ending="")
            self.stderr.flush()

        try:
            report = backtest_run(payload=payload, since=since, until=until, only=options["only"], progress=progress)
        except BacktestInvalid as exc:
            raise CommandError("Invalid backtest: " + "; ".join(exc.errors)) from exc
        self.stderr.write("")
        if options["format"] == "json":
            self.stdout.write(json.dumps(report, indent=2, ensure_ascii=False))
        else:
            self.stdout.write("\n".join(report_lines(report)))
