from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from connect.webhooks.models import Kind
from connect.webhooks.services import webhook_subscription_create


class Command(BaseCommand):
    help = (
        "Subscribe URL to webhooks of the given kinds, signed with SECRET (X-Rewards-Signature; see docs/webhooks.md). "
        "Loopback, private, link-local and metadata addresses are refused unless WEBHOOKS_ALLOW_PRIVATE is on."
    )

    def add_arguments(self, parser):
        parser.add_argument("url")
        parser.add_argument("--secret", required=True, help="At least 16 characters; the receiver verifies with it.")
        parser.add_argument("--kinds", nargs="+", required=True, choices=Kind.values, metavar="KIND",
                            help=f"One or more of: {', '.join(Kind.values)}.")  # fmt: skip
        parser.add_argument("--description", default="")

    def handle(self, *args, url, secret, kinds, description, **options):
        try:
            subscription = webhook_subscription_create(url=url, kinds=kinds, secret=secret, description=description)
        except ValidationError as exc:
            raise CommandError(
                "; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())
            ) from None
        self.stdout.write(
            f"Webhook subscription {subscription.pk} → {subscription.url} for {', '.join(subscription.kinds)}"
        )
