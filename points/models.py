"""The points ledger (double-entry) and the service clients that call the APIs.

Money-like invariants, each held by the database as well as by the code:
- every Transaction's Entries sum to zero (PostgreSQL constraint trigger, checked at commit);
- Entries are never updated or deleted (PostgreSQL trigger); a correction is a new Transaction;
- a user Account never has ``balance - held < 0`` nor ``held < 0`` (CHECK constraints);
- an operation's (source, external_id) is used once, forever (unique constraint).
"""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone
from rest_framework_api_key.models import AbstractAPIKey, APIKeyManager

SCOPES = (
    "events:write",
    "events:read",
    "points:credit",
    "points:debit",
    "points:hold",
    "points:read",
)


class ServiceClient(models.Model):
    """A calling service. Its name is the ``source_service`` it may post events as."""

    name = models.CharField(max_length=100, unique=True)
    scopes = models.JSONField(
        default=list,
        blank=True,
        help_text="e.g. events:write, events:write:referral. (prefix-limited), events:read, "
        "points:credit, points:debit, points:hold, points:read",
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name


class ServiceClientKeyManager(APIKeyManager):
    def get_usable_keys(self):
        return super().get_usable_keys().select_related("client").filter(client__is_active=True)


class ServiceClientKey(AbstractAPIKey):
    """A hashed API key of a client; shown once at creation, revocable, several may coexist (rotation)."""

    client = models.ForeignKey(ServiceClient, on_delete=models.CASCADE, related_name="keys")

    objects = ServiceClientKeyManager()

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "API key"
        verbose_name_plural = "API keys"


class Account(models.Model):
    class Kind(models.TextChoices):
        USER = "user", "User"
        SYSTEM = "system", "System"

    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.USER)
    user_id = models.CharField(max_length=100, null=True, blank=True, unique=True)
    code = models.CharField(max_length=50, null=True, blank=True, unique=True, help_text="Name of a system account.")
    # Cached sums of this account's entries, kept for user accounts only: system accounts take the
    # other side of every operation, and a running total there would serialise all writers on one row.
    balance = models.BigIntegerField(default=0)
    held = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        indexes = [
            # The finance dashboard's largest balances.
            models.Index(fields=["-balance"], condition=Q(kind="user"), name="points_account_top_balance"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind="system") | (Q(held__gte=0) & Q(balance__gte=F("held"))),
                name="points_account_available_not_negative",
            ),
            models.CheckConstraint(
                condition=(Q(kind="user") & Q(user_id__isnull=False) & Q(code__isnull=True))
                | (Q(kind="system") & Q(code__isnull=False) & Q(user_id__isnull=True)),
                name="points_account_kind_identity",
            ),
        ]

    def __str__(self) -> str:
        return self.user_id if self.kind == self.Kind.USER else f"[{self.code}]"

    @property
    def available(self) -> int:
        return self.balance - self.held


class SystemAccount(models.TextChoices):
    ISSUED = "points_issued", "Points issued"
    SPENT = "points_spent", "Points spent"
    ADJUSTMENTS = "adjustments", "Manual adjustments"
    EXPIRED = "points_expired", "Points expired"


class Hold(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        CAPTURED = "captured", "Captured"
        RELEASED = "released", "Released"
        EXPIRED = "expired", "Expired"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="holds")
    source = models.CharField(max_length=100, help_text="The client that placed the hold.")
    amount = models.BigIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    expires_at = models.DateTimeField()
    captured_amount = models.BigIntegerField(default=0)
    released_amount = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["expires_at"], condition=Q(status="active"), name="points_hold_active_expiry"),
            models.Index(fields=["-created_at"], name="points_hold_recent"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="points_hold_amount_positive"),
            models.CheckConstraint(
                condition=Q(captured_amount__gte=0)
                & Q(released_amount__gte=0)
                & Q(amount__gte=F("captured_amount") + F("released_amount")),
                name="points_hold_settlement_within_amount",
            ),
        ]

    def __str__(self) -> str:
        return f"hold {self.id} ({self.amount}, {self.status})"

    def is_active_at(self, moment) -> bool:
        return self.status == self.Status.ACTIVE and self.expires_at > moment


class Transaction(models.Model):
    class Kind(models.TextChoices):
        CREDIT = "credit", "Credit"
        DEBIT = "debit", "Debit"
        HOLD = "hold", "Hold"
        CAPTURE = "capture", "Capture"
        RELEASE = "release", "Release"
        ADJUSTMENT = "adjustment", "Adjustment"
        EXPIRY = "expiry", "Expiry"
        REVERSAL = "reversal", "Reversal"
        POINTS_EXPIRY = "points_expiry", "Points expiry"

    REVERSIBLE_KINDS = (Kind.CREDIT, Kind.DEBIT, Kind.CAPTURE)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    # Idempotency namespace: the calling client's name ("staff" / "system" for internal writers).
    source = models.CharField(max_length=100)
    external_id = models.CharField(max_length=200)
    request_hash = models.CharField(max_length=64)
    # Indexed by points_txn_account_recent, which leads with it.
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="transactions", db_index=False)
    amount = models.BigIntegerField()
    reason = models.CharField(max_length=200, blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    hold = models.ForeignKey(
        Hold, on_delete=models.PROTECT, null=True, blank=True, related_name="transactions", db_index=False
    )
    # The user's account right after this transaction: the original result of a replay, and the
    # running balance of a statement.
    balance_after = models.BigIntegerField(null=True)
    held_after = models.BigIntegerField(null=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+", db_index=False
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # A reversal's original (a credit, debit or capture), and on an original the points reversed so
    # far: a counter the database checks never passes the original's amount.
    reverses = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="reversals", db_index=False
    )
    reversed_amount = models.BigIntegerField(default=0, db_default=0)
    # A credit reversal with allow_partial: the points asked for that the user no longer had.
    shortfall = models.BigIntegerField(default=0, db_default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["source", "external_id"], name="points_txn_idempotency"),
            models.CheckConstraint(condition=Q(amount__gte=0), name="points_txn_amount_not_negative"),
            models.CheckConstraint(
                condition=Q(reversed_amount__gte=0) & Q(reversed_amount__lte=F("amount")),
                name="points_txn_reversed_within_amount",
            ),
            models.CheckConstraint(condition=Q(shortfall__gte=0), name="points_txn_shortfall_not_negative"),
        ]
        indexes = [
            models.Index(fields=["account", "-created_at"], name="points_txn_account_recent"),
            models.Index(fields=["kind", "-created_at"], name="points_txn_kind_recent"),
            models.Index(fields=["external_id"], name="points_txn_external_id"),
            models.Index(fields=["reason"], opclasses=["varchar_pattern_ops"], name="points_txn_reason_prefix"),
            models.Index(fields=["reverses"], condition=Q(reverses__isnull=False), name="points_txn_reverses"),
            # Rarely set (holds and their settlements; staff adjustments): only the rows that have them
            # are indexed, so the credits and debits that make up most of the ledger write no entry.
            models.Index(fields=["hold"], condition=Q(hold__isnull=False), name="points_txn_hold"),
            models.Index(fields=["created_by"], condition=Q(created_by__isnull=False), name="points_txn_created_by"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} ({self.external_id})"

    @property
    def available_after(self) -> int | None:
        if self.balance_after is None or self.held_after is None:
            return None
        return self.balance_after - self.held_after


class Entry(models.Model):
    """One leg of a transaction. ``part`` says whether it moves the account's available or held points."""

    class Part(models.TextChoices):
        AVAILABLE = "available", "Available"
        HELD = "held", "Held"

    transaction = models.ForeignKey(Transaction, on_delete=models.PROTECT, related_name="entries")
    # Indexed by points_entry_account_part, which leads with it.
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="entries", db_index=False)
    part = models.CharField(max_length=10, choices=Part.choices, default=Part.AVAILABLE)
    amount = models.BigIntegerField()

    class Meta:
        verbose_name_plural = "entries"
        constraints = [
            models.CheckConstraint(condition=~Q(amount=0), name="points_entry_amount_nonzero"),
        ]
        indexes = [models.Index(fields=["account", "part"], name="points_entry_account_part")]

    def __str__(self) -> str:
        return f"{self.account} {self.part} {self.amount:+d}"


class Lot(models.Model):
    """Points a credit (or positive adjustment) brought in, and what is left of them (SPEC §13).

    A user's open lots' ``remaining`` add up to the account's balance. Debits, captures, credit
    reversals and expiry take from lots; a debit's or capture's reversal gives back to the lots it
    took from (``LotUse``). Every change to an account's lots is made while holding that account's
    row lock, so lot updates never race each other.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="lots")
    # The credit or adjustment that opened the lot; null for the lot the upgrade to lots opened for a
    # balance that existed before them.
    transaction = models.OneToOneField(Transaction, on_delete=models.PROTECT, null=True, blank=True, related_name="lot")
    amount = models.BigIntegerField()
    remaining = models.BigIntegerField()
    expired_amount = models.BigIntegerField(default=0)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Null: never expires.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            # Consumption order of one account's open lots (an ascending index sorts nulls last in
            # PostgreSQL, the order "never-expiring last" needs; SQLite has no NULLS LAST in an index).
            models.Index(
                fields=["account", "expires_at", "created_at", "id"],
                condition=Q(remaining__gt=0),
                name="points_lot_open_order",
            ),
            # The expiry run's scan of due lots.
            models.Index(
                fields=["expires_at", "id"],
                condition=Q(remaining__gt=0) & Q(expires_at__isnull=False),
                name="points_lot_due",
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="points_lot_amount_positive"),
            models.CheckConstraint(
                condition=Q(remaining__gte=0) & Q(expired_amount__gte=0) & Q(remaining__lte=F("amount")),
                name="points_lot_remaining_within_amount",
            ),
        ]

    def __str__(self) -> str:
        return f"lot {self.id} ({self.remaining}/{self.amount})"


class LotUse(models.Model):
    """Points one transaction took from one lot; ``returned`` of them given back by its reversals."""

    transaction = models.ForeignKey(Transaction, on_delete=models.PROTECT, related_name="lot_uses")
    lot = models.ForeignKey(Lot, on_delete=models.PROTECT, related_name="uses")
    amount = models.BigIntegerField()
    returned = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(amount__gt=0) & Q(returned__gte=0) & Q(returned__lte=F("amount")),
                name="points_lot_use_returned_within_amount",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.amount} from lot {self.lot_id} by {self.transaction_id}"
