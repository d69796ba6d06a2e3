"""Reward rules: a rule matches events of one type and grants rewards through its reward lines.

Every edit is kept twice: field-level history (who changed what, when) by django-simple-history, and
one ``RuleVersion`` per version number holding the rule exactly as ``export_rules`` would print it, so
the rule a RewardAction came from (rule + rule_version) can always be looked up.
"""

import json

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models import F, Q
from django.utils import timezone
from simple_history.models import HistoricalRecords

from .expressions import ExpressionError, ProfileView, validate_expression

EVENT_TYPE_PATTERN = r"^[a-z0-9_]+(\.[a-z0-9_]+)+$"
MAX_PARAMS_BYTES = 16 * 1024

validate_event_type = RegexValidator(
    EVENT_TYPE_PATTERN,
    message="Use dotted lower-case names of letters, digits and underscores, e.g. quest.completed.",
    code="invalid_event_type",
)


def validate_rule_expression(value: str) -> None:
    """Field validator: the expression must compile in the rule language (shown at the field)."""
    try:
        validate_expression(value)
    except ExpressionError as exc:
        raise ValidationError(str(exc), code="invalid_expression") from exc


class LockCondition(models.TextChoices):
    NONE = "", "None (pay at once)"
    VIP_OR_PRO = "vip_or_pro", "VIP or PRO"
    VIP = "vip", "VIP"
    PRO = "pro", "PRO"


def lock_satisfied(lock_condition: str, profile: ProfileView | None) -> bool:
    """Whether a target with this profile meets the line's lock condition ("" is always met).

    An unknown user (no profile) meets no named condition. An unknown condition name is a data error.
    """
    if not lock_condition:
        return True
    if lock_condition not in LockCondition.values:
        raise ValueError(f"Unknown lock condition {lock_condition!r}.")
    if profile is None:
        return False
    if lock_condition == LockCondition.VIP_OR_PRO:
        return bool(profile.is_vip or profile.is_pro)
    if lock_condition == LockCondition.VIP:
        return bool(profile.is_vip)
    return bool(profile.is_pro)


class Period(models.TextChoices):
    DAY = "day", "Day"
    WEEK = "week", "Week (ISO, from Monday)"
    MONTH = "month", "Month"


class BudgetPolicy(models.TextChoices):
    PARTIAL = "partial", "Partial: pay what is left"
    SKIP = "skip", "Skip: pay nothing"


class Rule(models.Model):
    code = models.SlugField(max_length=100, unique=True, help_text="Stable identifier, e.g. quest_completed_rewards.")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    event_type = models.CharField(max_length=100, validators=[validate_event_type], help_text="e.g. quest.completed")
    condition = models.TextField(
        blank=True,
        validators=[validate_rule_expression],
        help_text="Expression; empty means always. e.g. context.level == 1",
    )
    priority = models.IntegerField(default=100, help_text="Lower runs first.")
    is_active = models.BooleanField(default=True)
    valid_from = models.DateTimeField(
        null=True, blank=True, help_text="Applies to events that occurred (else were received) at or after this."
    )
    valid_until = models.DateTimeField(null=True, blank=True, help_text="Applies to events before this moment.")
    stop_processing = models.BooleanField(
        default=False, help_text="When this rule matches, no lower-priority rule of the same event runs."
    )
    budget = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Most points this rule's points lines may pay (ever, or per budget period). Empty: no budget.",
    )
    budget_period = models.CharField(
        max_length=5,
        choices=Period.choices,
        null=True,
        blank=True,
        help_text="Calendar period the budget renews in (PROGRAM_TIME_ZONE); empty: over the rule's life.",
    )
    budget_policy = models.CharField(
        max_length=7,
        choices=BudgetPolicy.choices,
        default=BudgetPolicy.PARTIAL,
        help_text="partial: the line crossing the budget pays what is left; skip: it pays nothing.",
    )
    version = models.PositiveIntegerField(default=1, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ("priority", "code")
        indexes = [models.Index(fields=["event_type", "is_active", "priority"], name="rule_event_active_prio_idx")]
        constraints = [
            models.CheckConstraint(
                condition=Q(valid_from__isnull=True) | Q(valid_until__isnull=True) | Q(valid_from__lt=F("valid_until")),
                name="rule_valid_window_ordered",
                violation_error_message="valid_from must be before valid_until.",
            ),
        ]

    def __str__(self) -> str:
        return self.code

    def clean(self):
        super().clean()
        if self.valid_from and self.valid_until and self.valid_from >= self.valid_until:
            raise ValidationError({"valid_until": "Must be after valid_from."})
        if self.budget_period and self.budget is None:
            raise ValidationError({"budget": "Required when a budget period is set."})


class RewardLine(models.Model):
    class RewardType(models.TextChoices):
        POINTS = "points", "Points"
        NFT = "nft", "NFT"
        G2A_OFFCHAIN = "g2a_offchain", "G2A off-chain"

    rule = models.ForeignKey(Rule, on_delete=models.CASCADE, related_name="rewards")
    position = models.PositiveIntegerField(default=0, help_text="Lines run in this order.")
    target = models.CharField(
        max_length=1000,
        validators=[validate_rule_expression],
        help_text="Expression giving a user id: actor, primary_subject, context.rf_partner_id, upline(actor, 1)…",
    )
    reward_type = models.CharField(max_length=20, choices=RewardType.choices)
    amount = models.CharField(
        max_length=1000,
        blank=True,
        validators=[validate_rule_expression],
        help_text="Expression giving an integer (fractions round down). For nft it is always 1.",
    )
    params = models.JSONField(
        default=dict, blank=True, help_text='For the channel, e.g. {"badge_type": "..."} for nft.'
    )
    lock_condition = models.CharField(max_length=20, choices=LockCondition.choices, default="", blank=True)
    max_per_target = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="At most this many actions of this line for one target, ever (a badge: 1).",
    )
    max_per_target_per_period = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="At most this many actions of this line for one target per calendar period.",
    )
    period = models.CharField(
        max_length=5,
        choices=Period.choices,
        null=True,
        blank=True,
        help_text="The calendar period of max_per_target_per_period (PROGRAM_TIME_ZONE).",
    )

    history = HistoricalRecords()

    class Meta:
        ordering = ("position", "id")
        indexes = [models.Index(fields=["rule", "position"], name="rewardline_rule_position_idx")]

    def __str__(self) -> str:
        return f"{self.rule_id}#{self.position} {self.reward_type} → {self.target}"

    def clean(self):
        super().clean()
        errors: dict[str, list[str]] = {}
        if self.reward_type == self.RewardType.NFT:
            if not (self.amount or "").strip():
                self.amount = "1"
            badge_type = self.params.get("badge_type") if isinstance(self.params, dict) else None
            if not isinstance(badge_type, str) or not badge_type.strip():
                errors.setdefault("params", []).append('An nft line needs params {"badge_type": "<non-empty string>"}.')
        elif not (self.amount or "").strip():
            errors.setdefault("amount", []).append("Required for points and g2a_offchain lines.")
        if not (self.target or "").strip():
            errors.setdefault("target", []).append("Required.")
        if (self.max_per_target_per_period is None) != (not self.period):
            errors.setdefault("period", []).append("max_per_target_per_period and period go together.")
        if not isinstance(self.params, dict):
            errors.setdefault("params", []).append("Must be a JSON object.")
        elif len(json.dumps(self.params, separators=(",", ":"))) > MAX_PARAMS_BYTES:
            errors.setdefault("params", []).append(f"At most {MAX_PARAMS_BYTES} bytes of JSON.")
        if errors:
            raise ValidationError(errors)


class RuleVersion(models.Model):
    """The rule at one version, as exported JSON; written whenever the version changes."""

    rule = models.ForeignKey(Rule, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    snapshot = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ("rule", "-version")
        constraints = [models.UniqueConstraint(fields=["rule", "version"], name="ruleversion_rule_version_uniq")]

    def __str__(self) -> str:
        return f"{self.rule_id} v{self.version}"


class BudgetCounter(models.Model):
    """Points a rule's lines paid in one budget period (``period_key``; "all" for a life budget).

    The lock row behind a budget: an ingest locks it until commit, so concurrent events never pay
    more than the budget between them. Reversals count back through ``rules.budgets.budget_refund``.
    """

    rule = models.ForeignKey(Rule, on_delete=models.CASCADE, related_name="budget_counters")
    period_key = models.CharField(max_length=20)
    used = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["rule", "period_key"], name="rules_budget_counter_uniq"),
            models.CheckConstraint(condition=Q(used__gte=0), name="rules_budget_counter_used_nonnegative"),
        ]

    def __str__(self) -> str:
        return f"{self.rule_id} {self.period_key}: {self.used}"


class PeriodGrant(models.Model):
    """How many actions a reward line made for one target in one calendar period: the lock row
    behind ``max_per_target_per_period``."""

    reward_line = models.ForeignKey(RewardLine, on_delete=models.CASCADE, related_name="+")
    target_user_id = models.CharField(max_length=100)
    period_key = models.CharField(max_length=20)
    count = models.IntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["reward_line", "target_user_id", "period_key"], name="rules_period_grant_uniq"
            ),
            models.CheckConstraint(condition=Q(count__gte=0), name="rules_period_grant_count_nonnegative"),
        ]

    def __str__(self) -> str:
        return f"line {self.reward_line_id} → {self.target_user_id} {self.period_key}: {self.count}"


class RuleDraft(models.Model):
    """A change to a rule (or a new rule) in its JSON form, not applied to events until published."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PUBLISHED = "published", "Published"
        DISCARDED = "discarded", "Discarded"

    code = models.SlugField(max_length=100, help_text="The rule this draft changes or creates.")
    data = models.JSONField(help_text="The rule as in a rules file (SPEC §6).")
    base_version = models.PositiveIntegerField(null=True, blank=True, editable=False)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT, editable=False)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    approved_at = models.DateTimeField(null=True, blank=True, editable=False)
    published_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    published_at = models.DateTimeField(null=True, blank=True, editable=False)
    published_version = models.PositiveIntegerField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ("-created_at",)
        indexes = [models.Index(fields=["code", "status"], name="rules_draft_code_status_idx")]

    def __str__(self) -> str:
        return f"draft of {self.code} ({self.status})"
