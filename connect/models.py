"""Connect: the event inbox, the user profiles its rules read, and the reward-action outbox."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

# Django finds an app's models in its models module: the webhook models are declared there.
from .webhooks.models import WebhookAttempt, WebhookDelivery, WebhookSubscription  # noqa: F401


class EconomicEvent(models.Model):
    class Status(models.TextChoices):
        PROCESSED = "processed", "Processed"
        IGNORED = "ignored", "Ignored"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    source_service = models.CharField(max_length=100)
    external_id = models.CharField(max_length=200)
    event_type = models.CharField(max_length=100)
    actor_user_id = models.CharField(max_length=100)
    primary_subject_user_id = models.CharField(max_length=100, null=True, blank=True)
    context = models.JSONField(default=dict, blank=True)
    occurred_at = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.IGNORED)
    error = models.TextField(blank=True, default="")
    # Fingerprint of the caller's payload: a replay is told from a conflicting reuse of the id.
    payload_hash = models.CharField(max_length=64)
    # Why the event got what it got (SPEC §15), as ``connect.trace.trace_document`` builds it.
    trace = models.JSONField(default=dict, blank=True)
    # A refund or cancellation (SPEC §12): the earlier event of the same source whose rewards it takes back.
    reverses = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="reversal_events", db_index=False
    )
    reverses_external_id = models.CharField(max_length=200, null=True, blank=True)
    reversal_fraction = models.DecimalField(max_digits=20, decimal_places=10, null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["source_service", "external_id"], name="connect_event_idempotency"),
        ]
        indexes = [
            models.Index(fields=["event_type", "-received_at"], name="connect_event_type_recent"),
            models.Index(fields=["-received_at"], name="connect_event_recent"),
            models.Index(fields=["actor_user_id"], name="connect_event_actor"),
            models.Index(fields=["primary_subject_user_id"], name="connect_event_subject"),
            models.Index(fields=["status", "-received_at"], name="connect_event_status_recent"),
            models.Index(fields=["external_id"], name="connect_event_external_id"),
            # Almost every event reverses nothing: only reversals are indexed, so the others write no entry.
            models.Index(fields=["reverses"], condition=Q(reverses__isnull=False), name="connect_event_reverses"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.source_service}/{self.external_id}"


class UserProfile(models.Model):
    """What rules may know of a user, projected from events (SPEC §7)."""

    user_id = models.CharField(max_length=100, primary_key=True)
    sponsor_id = models.CharField(max_length=100, null=True, blank=True, db_index=True)
    is_vip = models.BooleanField(default=False)
    is_pro = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.user_id

    @property
    def tier(self) -> str:
        if self.is_pro:
            return "pro"
        if self.is_vip:
            return "vip"
        return "basic"


class RewardAction(models.Model):
    """One reward to one user: the outbox row its dispatch task re-reads (SPEC §8)."""

    class Status(models.TextChoices):
        LOCKED = "locked", "Locked"
        PENDING = "pending", "Pending"
        DISPATCHED = "dispatched", "Dispatched"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class RewardType(models.TextChoices):
        POINTS = "points", "Points"
        NFT = "nft", "NFT badge"
        G2A_OFFCHAIN = "g2a_offchain", "G2A off-chain tokens"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    event = models.ForeignKey(EconomicEvent, on_delete=models.PROTECT, related_name="reward_actions")
    rule = models.ForeignKey("rules.Rule", on_delete=models.PROTECT, related_name="reward_actions")
    rule_code = models.CharField(max_length=100)
    rule_version = models.PositiveIntegerField()
    reward_line = models.ForeignKey(
        "rules.RewardLine", on_delete=models.SET_NULL, null=True, blank=True, related_name="reward_actions"
    )
    target_user_id = models.CharField(max_length=100)
    reward_type = models.CharField(max_length=20, choices=RewardType.choices)
    amount = models.BigIntegerField()
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices)
    locked_until_condition = models.CharField(max_length=20, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    result = models.JSONField(default=dict, blank=True)
    # When the next dispatch attempt is due; the sweeper re-enqueues rows whose time has come.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # When a ``locked`` action's condition was met and it became ``pending`` (null: never locked): a
    # points credit is posted from then on, so its lot's ``params.expires_in_days`` counts from here.
    released_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)
    completed_at = models.DateTimeField(null=True, blank=True)
    cancel_reason = models.TextField(blank=True, default="")
    cancelled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+", db_index=False
    )
    # The counters this action was counted in, so a reversal can count it back (rules.budgets):
    # its rule's budget period ("" when not charged to a budget; the charge is the amount) and its
    # line's max_per_target_per_period period ("" when the line has none).
    budget_period_key = models.CharField(max_length=20, blank=True, default="")
    cap_period_key = models.CharField(max_length=20, blank=True, default="")
    # SPEC §12: a reversal action takes back (part of) the action it ``reverses``; an original counts
    # in ``reversed_amount`` how much of it was taken back so far, and a points reversal records in
    # ``shortfall`` what the user no longer had.
    reverses = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="reversal_actions", db_index=False
    )
    reversed_amount = models.BigIntegerField(default=0)
    shortfall = models.BigIntegerField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["target_user_id", "status"], name="connect_action_target_status"),
            models.Index(fields=["-created_at"], name="connect_action_recent"),
            models.Index(fields=["status", "-created_at"], name="connect_action_status_recent"),
            models.Index(fields=["reward_type", "status"], name="connect_action_type_status"),
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status__in=["pending", "dispatched"]),
                name="connect_action_due",
            ),
            # Rarely set: only the rows that have them are indexed, so the insert and the two
            # status updates of every other action write no entry for them.
            models.Index(
                fields=["cancelled_by"], condition=Q(cancelled_by__isnull=False), name="connect_action_cancelled_by"
            ),
            models.Index(fields=["reverses"], condition=Q(reverses__isnull=False), name="connect_action_reverses"),
        ]
        constraints = [
            # An action reversed before delivery is cancelled with nothing left to pay.
            models.CheckConstraint(
                condition=Q(amount__gt=0) | Q(amount=0, status="cancelled"), name="connect_action_amount_positive"
            ),
            models.CheckConstraint(condition=Q(reversed_amount__gte=0), name="connect_action_reversed_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.reward_type} {self.amount} → {self.target_user_id} ({self.status})"


class RewardGrant(models.Model):
    """How many actions a reward line has made for one target: the lock row behind max_per_target."""

    reward_line = models.ForeignKey("rules.RewardLine", on_delete=models.CASCADE, related_name="+")
    target_user_id = models.CharField(max_length=100)
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["reward_line", "target_user_id"], name="connect_grant_unique"),
        ]

    def __str__(self) -> str:
        return f"line {self.reward_line_id} → {self.target_user_id}: {self.count}"


class BacktestRun(models.Model):
    """One backtest (SPEC §15): rules (a draft, or a file) replayed over a period of stored events.

    The report is the only thing a backtest writes; the admin keeps the last BACKTEST_KEEP_REPORTS.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    draft = models.ForeignKey("rules.RuleDraft", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    rules = models.JSONField(help_text='The rules file replayed: {"rules": [...]}.')
    since = models.DateTimeField()
    until = models.DateTimeField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    processed = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    report = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True, default="")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"backtest {self.since:%Y-%m-%d}..{self.until:%Y-%m-%d} ({self.status})"

    @property
    def percent(self) -> int:
        if self.status == self.Status.DONE:
            return 100
        return int(100 * self.processed / self.total) if self.total else 0
