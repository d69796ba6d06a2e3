"""Play the seed workflows (SPEC §10) against a running server, through its HTTP API.

Run the server first (``make run``), then in another terminal ``python manage.py demo``. The command
shares the server's database only to issue API keys for the seed services; everything else — posting
the events, reading the reward actions and the balances — goes over HTTP, as a calling service would.
"""

import secrets
import time
from dataclasses import dataclass, field
from datetime import timedelta

import requests
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from points.models import ServiceClient, ServiceClientKey

SEED_SERVICES = ("referral_service", "quest_service", "voucher_service", "rielt_service", "rf_service", "user_service")
SERVICE_SCOPES = ("events:write", "events:read")
CONSOLE_CLIENT = "demo_console"
CONSOLE_SCOPES = ("events:read", "points:read")
KEY_LIFETIME = timedelta(hours=1)
SETTLED = {"completed", "failed", "cancelled", "locked"}
DEMO_RULE_CODES = (
    "referral_first_level_registration",
    "referral_second_level_deferred",
    "quest_completed_rewards",
    "quest_master_badge",
    "voucher_premium_purchase",
    "rielt_booking_paid",
    "rf_partner_review_created",
)


@dataclass
class Step:
    label: str
    service: str
    event_type: str
    actor: str
    subject: str | None = None
    context: dict = field(default_factory=dict)


def demo_steps(tag: str) -> list[Step]:
    """The seed workflows, with user ids unique to this run so balances start from zero."""

    def user(name: str) -> str:
        return f"{tag}-{name}"

    # Numbered in the order they are posted; the workflow (SPEC §10) each one plays is named in words.
    steps = [
        Step("referral, first level", "referral_service", "referral.joined", user("newbie"), user("sponsor"),
             {"level": 1}),
        Step("referral, first level", "referral_service", "referral.joined", user("tenant"), user("newbie"),
             {"level": 1}),
        Step("referral, second level (locked)", "referral_service", "referral.subjoined", user("sub"),
             user("sponsor"), {"level": 2}),
        Step("quest completed", "quest_service", "quest.completed", user("player"), user("author"),
             {"quest_id": "q-101", "base_reward_points": 40, "total_quests_completed": 3}),
        Step("premium voucher", "voucher_service", "voucher.premium_purchased", user("buyer"), None,
             {"amount": 1000, "rf_partner_id": user("partner"), "pro_promoter_id": user("promoter")}),
        Step("housing booking paid", "rielt_service", "rielt.booking_paid", user("tenant"), None,
             {"amount": 12000, "host_user_id": user("host"), "housing_type": "apartment", "city": "Lisbon"}),
        Step("RF partner review", "rf_service", "rf_partner.review_created", user("reviewer"), None,
             {"rf_partner_id": user("partner"), "rating": 5, "pro_curator_id": user("curator")}),
        Step("badge at 10 quests", "quest_service", "quest.completed", user("player"), user("author"),
             {"quest_id": "q-110", "base_reward_points": 30, "total_quests_completed": 10}),
        Step("sponsor VIP: unlocks step 3", "referral_service", "referral.user_upgraded_to_vip", user("sponsor")),
    ]  # fmt: skip
    for number, step in enumerate(steps, start=1):
        step.label = f"{number}. {step.label}"
    return steps


@dataclass
class Refund:
    """A reversal event (SPEC §12) of one of the steps: ``reverses`` is that step's number."""

    label: str
    service: str
    event_type: str
    actor: str
    reverses: int
    fraction: float | None = None


def demo_refunds(tag: str, first_number: int) -> list[Refund]:
    """The seed workflows' refunds: the premium voucher refunded in part, the booking cancelled."""
    refunds = [
        Refund("premium voucher refunded (50%)", "voucher_service", "voucher.refunded", f"{tag}-buyer", 5, 0.5),
        Refund("housing booking cancelled", "rielt_service", "rielt.booking_cancelled", f"{tag}-tenant", 6),
    ]
    for number, refund in enumerate(refunds, start=first_number):
        refund.label = f"{number}. {refund.label}"
    return refunds


class ApiSession:
    def __init__(self, base_url: str, key: str, timeout: float):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Api-Key {key}"

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        url = self.base_url + path
        try:
            return self.session.request(method, url, timeout=self.timeout, allow_redirects=False, **kwargs)
        except requests.RequestException as exc:
            raise CommandError(
                f"Cannot reach {url}: {exc}. Is the server running (make run), and is --base-url right?"
            ) from exc

    def json(self, method: str, path: str, expected: tuple[int, ...], **kwargs) -> dict:
        response = self.request(method, path, **kwargs)
        if response.status_code == 401:
            raise CommandError(
                f"{method} {path} answered 401: the server does not know the demo's key. "
                "Run the demo with the same database settings (DATABASE_URL) as the server."
            )
        if response.status_code not in expected:
            raise CommandError(f"{method} {path} answered {response.status_code}: {response.text[:500]}")
        return response.json()


class Command(BaseCommand):
    help = (
        "Post the seed workflows to a running server through its API, wait for the rewards to settle, "
        "and print the reward actions and the balances of the users involved; then refund the premium "
        "voucher in part and cancel the booking, and print what was taken back and the balances after."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--base-url",
            default=settings.DEMO_BASE_URL,
            help="The running server (default: DEMO_BASE_URL, else http://127.0.0.1:$PORT, PORT defaulting to 8000).",
        )
        parser.add_argument(
            "--wait", type=float, default=30.0, help="Seconds to wait at most for the actions to settle."
        )
        parser.add_argument("--tag", default="", help="Prefix of this run's user and event ids (default: random).")

    def handle(self, *args, base_url, wait, tag, **options):
        tag = tag or f"demo{secrets.token_hex(3)}"
        self._check_server(base_url)  # before anything is written: no keys for a server that is not there
        keys = self._keys()
        self._warn_if_rules_missing()
        sessions = {name: ApiSession(base_url, key, timeout=30) for name, key in keys.items()}
        console = sessions[CONSOLE_CLIENT]

        self.stdout.write(f"Posting the seed workflows to {base_url} (run {tag}) ...")
        posted = []
        for index, step in enumerate(demo_steps(tag), start=1):
            body = {
                "external_id": f"{tag}-evt-{index}",
                "event_type": step.event_type,
                "source_service": step.service,
                "actor_user_id": step.actor,
                "primary_subject_user_id": step.subject,
                "context": step.context,
            }
            event = sessions[step.service].json("POST", "/api/v1/events", (200, 201), json=body)
            posted.append((step, event))
            self.stdout.write(
                f"  {step.label:<36} {step.event_type:<30} → {event['status']}, "
                f"{len(event['reward_actions'])} action(s)"
            )

        events = self._wait_until_settled(console, [event["id"] for _, event in posted], wait)
        self._print_actions(posted, events)
        self._print_balances(console, self._users(posted, events))
        self._refund(sessions, console, tag, posted, wait)

    def _refund(self, sessions, console: ApiSession, tag: str, posted, wait: float) -> None:
        """Post the refunds, wait for their reversal actions, print them and the balances after them."""
        self.stdout.write("\nRefunds (reversal events): what the rewards of a refunded purchase gave is taken back ...")
        refunded = []
        for index, refund in enumerate(demo_refunds(tag, first_number=len(posted) + 1), start=1):
            original = posted[refund.reverses - 1][1]
            body = {
                "external_id": f"{tag}-refund-{index}",
                "event_type": refund.event_type,
                "source_service": refund.service,
                "actor_user_id": refund.actor,
                "reverses_external_id": original["external_id"],
            }
            if refund.fraction is not None:
                body["reversal_fraction"] = refund.fraction
            event = sessions[refund.service].json("POST", "/api/v1/events", (200, 201), json=body)
            refunded.append((refund, original, event))
            self.stdout.write(
                f"  {refund.label:<36} {refund.event_type:<30} → {event['status']}, "
                f"{len(event['reward_actions'])} reversal action(s)"
            )
        ids = [event["id"] for *_, event in refunded] + [original["id"] for _, original, _ in refunded]
        events = self._wait_until_settled(console, ids, wait)
        rows = []
        for _, original, event in refunded:
            for action in events[original["id"]]["reward_actions"]:
                note = f"{action['reversed_amount']} taken back"
                if action["status"] == "cancelled":
                    note += " before delivery: nothing paid"
                elif action["status"] != "completed":
                    note += " before delivery (reduced in place)"
                rows.append((original["external_id"], action["rule"], action["target_user_id"], action["reward_type"],
                             str(action["amount"]), action["status"], note))  # fmt: skip
            for action in events[event["id"]]["reward_actions"]:
                note = f"reverses {action['reverses']}"
                if action["shortfall"]:
                    note += f", shortfall {action['shortfall']} (already spent)"
                elif action["status"] == "pending" and action["last_error"]:
                    note += f": {action['last_error']}"
                rows.append((event["external_id"], action["rule"], action["target_user_id"], action["reward_type"],
                             f"-{action['amount']}", action["status"], note))  # fmt: skip
        self.stdout.write("\nRefunded rewards and their reversal actions")
        self._table(("event", "rule", "target", "type", "amount", "status", "note"), rows)
        users = []
        for _, original, _ in refunded:
            for action in events[original["id"]]["reward_actions"]:
                if action["reward_type"] == "points" and action["target_user_id"] not in users:
                    users.append(action["target_user_id"])
        self.stdout.write("\nBalances after the refunds (points users received from the refunded events)")
        self._print_balances(console, users, title=None)

    def _check_server(self, base_url: str) -> None:
        url = base_url.rstrip("/") + "/health"
        try:
            response = requests.get(url, timeout=10, allow_redirects=False)
        except requests.RequestException as exc:
            raise CommandError(
                f"Cannot reach {url}: {exc}. Is the server running (make run), and is --base-url (or PORT) right?"
            ) from exc
        if response.status_code != 200:
            raise CommandError(f"{url} answered {response.status_code}: the server is not ready.")

    # --- keys ------------------------------------------------------------------------------------

    @transaction.atomic
    def _keys(self) -> dict[str, str]:
        """A fresh, short-lived key for each seed service (created if missing) and for the demo console."""
        expiry = timezone.now() + KEY_LIFETIME
        keys = {}
        for name, scopes in [*((s, SERVICE_SCOPES) for s in SEED_SERVICES), (CONSOLE_CLIENT, CONSOLE_SCOPES)]:
            client, created = ServiceClient.objects.get_or_create(name=name, defaults={"scopes": list(scopes)})
            missing = sorted(set(scopes) - set(client.scopes or ()))
            if missing:
                client.scopes = sorted({*client.scopes, *missing})
                client.save(update_fields=["scopes"])
                self.stdout.write(f"Service client {name!r}: added scope(s) {', '.join(missing)} for the demo.")
            elif created:
                self.stdout.write(f"Service client {name!r} created with scopes {', '.join(scopes)}.")
            if not client.is_active:
                raise CommandError(f"Service client {name!r} is deactivated; the demo cannot post as it.")
            _, keys[name] = ServiceClientKey.objects.create_key(client=client, name="demo", expiry_date=expiry)
        return keys

    def _warn_if_rules_missing(self) -> None:
        from rules.models import Rule

        present = set(Rule.objects.filter(code__in=DEMO_RULE_CODES, is_active=True).values_list("code", flat=True))
        missing = [code for code in DEMO_RULE_CODES if code not in present]
        if missing:
            self.stdout.write(
                self.style.WARNING(
                    f"Demo rules not active: {', '.join(missing)} — their events will be ignored. "
                    "Load them with: python manage.py import_rules rules/demo_rules.json"
                )
            )

    # --- results ---------------------------------------------------------------------------------

    def _wait_until_settled(self, console: ApiSession, event_ids: list[str], wait: float) -> dict[str, dict]:
        deadline = time.monotonic() + wait
        while True:
            events = {event_id: console.json("GET", f"/api/v1/events/{event_id}", (200,)) for event_id in event_ids}
            unsettled = [a for e in events.values() for a in e["reward_actions"] if not _settled(a)]
            if not unsettled:
                return events
            if time.monotonic() >= deadline:
                self.stdout.write(
                    self.style.WARNING(
                        f"{len(unsettled)} action(s) still in flight after {wait:g}s; shown as they are."
                    )
                )
                return events
            time.sleep(0.5)

    def _print_actions(self, posted, events: dict[str, dict]) -> None:
        rows = []
        for step, event in posted:
            for action in events[event["id"]]["reward_actions"]:
                note = action["last_error"] if action["status"] in ("pending", "failed") else ""
                if action["status"] == "locked":
                    note = f"until {action['locked_until_condition']}"
                rows.append(
                    (event["external_id"], step.event_type, action["rule"], action["target_user_id"],
                     action["reward_type"], str(action["amount"]), action["status"], note)
                )  # fmt: skip
        self.stdout.write("\nReward actions")
        self._table(("event", "event type", "rule", "target", "type", "amount", "status", "note"), rows)

        waiting = sorted({row[7] for row in rows if row[6] == "pending" and "not configured" in row[7]})
        if waiting:
            self.stdout.write(
                "\nPending actions above wait for a channel that is not configured "
                f"({'; '.join(waiting)}). Nothing is lost: set the URL (and token) in the environment of "
                "the workers and the sweeper delivers them."
            )
        released = [row for row in rows if row[2] == "referral_second_level_deferred"]
        if released and all(row[6] == "completed" for row in released):
            self.stdout.write("The deferred level-2 reward was locked until the sponsor's VIP upgrade, then paid.")

    @staticmethod
    def _users(posted, events: dict[str, dict]) -> list[str]:
        users = []
        for step, event in posted:
            for user_id in (
                step.actor,
                step.subject,
                *(a["target_user_id"] for a in events[event["id"]]["reward_actions"]),
            ):
                if user_id and user_id not in users:
                    users.append(user_id)
        return users

    def _print_balances(self, console: ApiSession, users: list[str], title: str | None = "Balances") -> None:
        rows = []
        for user_id in users:
            account = console.json("GET", f"/internal/accounts/{user_id}", (200,))
            rows.append((user_id, str(account["balance"]), str(account["held"]), str(account["available"])))
        if title:
            self.stdout.write(f"\n{title}")
        self._table(("user", "balance", "held", "available"), rows)

    def _table(self, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
        widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]

        def line(cells) -> str:
            return "  ".join(f"{cell:<{width}}" for cell, width in zip(cells, widths, strict=True)).rstrip()

        self.stdout.write(line(header))
        self.stdout.write(line("-" * width for width in widths))
        for row in rows:
            self.stdout.write(line(row))


def _settled(action: dict) -> bool:
    """Final, locked, or waiting for a channel nobody configured (retrying would not change that)."""
    if action["status"] in SETTLED:
        return True
    return action["status"] == "pending" and action["attempts"] == 0 and "not configured" in action["last_error"]
