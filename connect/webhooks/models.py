"""Webhook subscriptions, the delivery outbox, and the log of each delivery attempt."""

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone


class Kind(models.TextChoices):
    REWARD_ACTION_COMPLETED = "reward_action.completed", "reward_action.completed"
    REWARD_ACTION_FAILED = "reward_action.failed", "reward_action.failed"
    EVENT_FAILED = "event.failed", "event.failed"
    POINTS_EXPIRING = "points.expiring", "points.expiring"


class WebhookSubscription(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    url = models.URLField(max_length=2000, help_text="Where deliveries are POSTed (http or https).")
    description = models.CharField(max_length=200, blank=True, default="")
    secret = models.CharField(max_length=200, help_text="Signs every delivery (HMAC-SHA256); shown once.")
    # After a rotation the old secret keeps signing (a second v1 in the header) until this moment.
    previous_secret = models.CharField(max_length=200, blank=True, default="")
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    kinds = models.JSONField(default=list, help_text="What to send: " + ", ".join(Kind.values))
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return self.url

    def signing_secrets(self, *, now=None) -> list[str]:
        """The secrets each delivery is signed with now: the current one, then the previous during its grace."""
        now = now or timezone.now()
        secrets = [self.secret]
        if self.previous_secret and self.previous_secret_expires_at and self.previous_secret_expires_at > now:
            secrets.append(self.previous_secret)
        return secrets


class WebhookDelivery(models.Model):
    """One notice to one subscription: the outbox row the sending task claims, sends and records."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    subscription = models.ForeignKey(WebhookSubscription, on_delete=models.CASCADE, related_name="deliveries")
    kind = models.CharField(max_length=40, choices=Kind.choices)
    payload = models.JSONField()
    # A notice sent at most once per subscription (e.g. one per expiring lot); null for the others.
    dedupe_key = models.CharField(max_length=200, null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    # Attempts since the delivery was created or last replayed (the retry budget counts these).
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    # A claim ends at this moment: a delivery whose worker died is claimed again after it.
    lease_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "kind", "dedupe_key"],
                condition=Q(dedupe_key__isnull=False),
                name="connect_webhook_delivery_once",
            ),
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at"], condition=Q(status__in=["pending", "sending"]), name="connect_webhook_due"
            ),
            models.Index(fields=["-created_at"], name="connect_webhook_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} → {self.subscription_id} ({self.status})"


class WebhookAttempt(models.Model):
    """The delivery log: one row per HTTP attempt, kept when the delivery is replayed."""

    class Outcome(models.TextChoices):
        DELIVERED = "delivered", "Delivered"
        RETRY = "retry", "Will retry"
        FAILED = "failed", "Failed"

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    response_excerpt = models.TextField(blank=True, default="")
    outcome = models.CharField(max_length=10, choices=Outcome.choices)

    class Meta:
        ordering = ("-started_at",)
        indexes = [models.Index(fields=["delivery", "-started_at"], name="connect_webhook_attempt_recent")]

    def __str__(self) -> str:
        return f"{self.delivery_id} at {self.started_at:%Y-%m-%d %H:%M:%S}: {self.outcome}"
