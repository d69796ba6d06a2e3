"""Operations admin: events, reward actions (retry / cancel through the dispatch services), profiles,
and the dashboard that puts the ledger and the reward actions side by side.

Everything here is read-only; the only writes are the staff actions of ``connect.staff``.
"""

import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Case, CharField, Count, F, OuterRef, Subquery, Sum, TextField, Value, When
from django.db.models.functions import Cast, TruncDate
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from config.admin_base import ReadOnlyModelAdmin, badge, breakable, user_link
from config.api.errors import DomainError
from config.api.jsonbody import json_text, stored_json_value
from connect.trace import trace_html
from points.admin_views import CreatedRangeFilter, day_start
from points.models import Account, Transaction
from rules import engine
from rules.admin import SimulationWorld, simulation_world_register
from rules.budgets import budget_used_without_lock, period_count_without_lock
from rules.models import RuleVersion

from . import rules_admin_sources
from .channels import channel_problems
from .models import EconomicEvent, RewardAction, RewardGrant, UserProfile
from .profiles import ProfileReader, profile_apply
from .staff import reward_action_cancel, reward_action_retry
from .webhooks import admin as webhooks_admin  # noqa: F401  (registers the webhook admin)

# One admin request handles at most this many actions; "select all" on a huge list is refused.
MAX_ACTIONS_PER_REQUEST = 500
WAITING_COUNT_LIMIT = 10_000
DASHBOARD_DAYS = 30
DASHBOARD_MAX_DAYS = 366
DASHBOARD_TOP_BALANCES = 10
DASHBOARD_MAX_SERIES = 7
# Ledger credits Connect makes for a points reward carry this reason prefix followed by the rule code.
REWARD_REASON_PREFIX = "reward:"


def _pretty_json(value) -> str:
    return format_html('<pre class="json">{}</pre>', json_text(value, indent=2, ensure_ascii=False, sort_keys=True))


def _waiting_by_channel() -> list[dict]:
    """Channels that cannot deliver now, with how many actions wait for them."""
    problems = channel_problems()
    if not problems:
        return []
    pending = RewardAction.objects.filter(status=RewardAction.Status.PENDING)
    # Counted up to a bound: shown on every list page, it must stay cheap however many have piled up.
    waiting = {
        reward_type: pending.filter(reward_type=reward_type)[: WAITING_COUNT_LIMIT + 1].count()
        for reward_type in problems
    }
    return [
        {
            "reward_type": reward_type,
            "problem": problem,
            "waiting": f"{WAITING_COUNT_LIMIT}+"
            if waiting[reward_type] > WAITING_COUNT_LIMIT
            else waiting[reward_type],
        }
        for reward_type, problem in sorted(problems.items())
    ]


class ReceivedRangeFilter(CreatedRangeFilter):
    title = "received between"
    fields = (("received_from", "From", "date"), ("received_to", "To (inclusive)", "date"))
    field = "received_at"

    def apply(self, queryset, values):
        return super().apply(
            queryset, {"created_from": values.get("received_from"), "created_to": values.get("received_to")}
        )


ReadOnlyAdmin = ReadOnlyModelAdmin


# --- events ----------------------------------------------------------------------------------


def reversal_summary(action: RewardAction) -> str:
    """One line on an action's part in reversals (SPEC §12): what a reversal action takes back from
    which action (and its shortfall), or how much of an original was taken back."""
    if action.reverses_id is not None:
        url = reverse("admin:connect_rewardaction_change", args=[action.reverses_id])
        short = (
            format_html(' <span class="badge badge-failed shortfall">short {}</span>', action.shortfall)
            if action.shortfall
            else ""
        )
        return format_html('takes back {} of <a class="reverses-link" href="{}">{}</a>{}', action.amount, url,
                           action.reverses_id, short)  # fmt: skip
    if action.reversed_amount:
        return format_html('<span class="reversed">{} reversed</span>', action.reversed_amount)
    return "—"


class RewardActionInline(admin.TabularInline):
    model = RewardAction
    fields = ("action_link", "rule_code", "rule_version", "target", "reward_type", "amount", "status_badge", "reversal")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("created_at", "id")

    @admin.display(description="Action")
    def action_link(self, obj: RewardAction):
        return format_html('<a href="{}">{}</a>', reverse("admin:connect_rewardaction_change", args=[obj.pk]), obj.pk)

    @admin.display(description="Reversal")
    def reversal(self, obj: RewardAction):
        return reversal_summary(obj)

    @admin.display(description="Target")
    def target(self, obj: RewardAction):
        return user_link(obj.target_user_id)

    @admin.display(description="Status")
    def status_badge(self, obj: RewardAction):
        return badge(obj.status)

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(EconomicEvent)
class EconomicEventAdmin(ReadOnlyAdmin):
    list_display = ("received_at", "event_type", "source_service", "external_id", "actor", "subject", "status_badge")
    list_filter = ("status", "event_type", "source_service", "received_at", ReceivedRangeFilter)
    search_fields = ("external_id__exact", "actor_user_id__exact", "primary_subject_user_id__exact")
    search_help_text = "Exact external_id, actor or primary subject user id."
    ordering = ("-received_at",)
    fields = (
        "id",
        "event_type",
        "source_service",
        "external_id",
        "actor",
        "subject",
        "occurred_at",
        "received_at",
        "status_badge",
        "error",
        "payload",
        "decision",
    )
    readonly_fields = (*fields, "reversal_of", "reversed_by")
    inlines = [RewardActionInline]
    change_form_template = "admin/connect/economicevent/change_form.html"

    @admin.display(description="Actor", ordering="actor_user_id")
    def actor(self, obj: EconomicEvent):
        return user_link(obj.actor_user_id)

    @admin.display(description="Primary subject", ordering="primary_subject_user_id")
    def subject(self, obj: EconomicEvent):
        return user_link(obj.primary_subject_user_id)

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: EconomicEvent):
        return badge(obj.status)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {"can_simulate": request.user.has_perm("rules.view_rule"), **(extra_context or {})}
        return super().change_view(request, object_id, form_url, extra_context)

    def get_fields(self, request, obj=None):
        # A refund or cancellation (SPEC §12) names its original; an original names its reversals.
        fields = list(self.fields)
        at = fields.index("status_badge")
        if obj is not None and obj.reverses_id is not None:
            fields.insert(at, "reversal_of")
        elif obj is not None and obj.reversal_events.exists():
            fields.insert(at, "reversed_by")
        return fields

    @admin.display(description="Reverses")
    def reversal_of(self, obj: EconomicEvent):
        original = obj.reverses
        url = reverse("admin:connect_economicevent_change", args=[original.pk])
        share = "all of it" if obj.reversal_fraction is None else f"fraction {obj.reversal_fraction.normalize()}"
        return format_html(
            '<a class="reversal-original" href="{}">{} {}</a> <span class="small">({}; its reversal actions are listed below)</span>',
            url,
            breakable(original.event_type),
            original.external_id,
            share,
        )

    @admin.display(description="Reversed by")
    def reversed_by(self, obj: EconomicEvent):
        reversals = obj.reversal_events.order_by("received_at").only(
            "pk", "external_id", "received_at", "reversal_fraction", "status"
        )
        return format_html_join(
            "",
            '<div class="reversal-event"><a href="{}">{}</a> {} {}</div>',
            (
                (
                    reverse("admin:connect_economicevent_change", args=[event.pk]),
                    event.external_id,
                    "all" if event.reversal_fraction is None else f"fraction {event.reversal_fraction.normalize()}",
                    badge(event.status),
                )
                for event in reversals
            ),
        )

    @admin.display(description="Decision (why it got what it got)")
    def decision(self, obj: EconomicEvent):
        return trace_html(obj.trace)

    def get_queryset(self, request):
        return super().get_queryset(request).defer("context")

    @admin.display(description="Payload (as received)")
    def payload(self, obj: EconomicEvent):
        # The context is read as text: a value stored nested too deeply is named, not decoded.
        context = stored_json_value(
            EconomicEvent.objects.filter(pk=obj.pk)
            .values_list(Cast("context", output_field=TextField()), flat=True)
            .first()
        )
        return _pretty_json(
            {
                "external_id": obj.external_id,
                "event_type": obj.event_type,
                "source_service": obj.source_service,
                "actor_user_id": obj.actor_user_id,
                "primary_subject_user_id": obj.primary_subject_user_id,
                "context": context,
                "occurred_at": obj.occurred_at.isoformat() if obj.occurred_at else None,
            }
        )


# --- reward actions --------------------------------------------------------------------------


class CancelForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        max_length=1000,
        help_text="Required. Kept on each action with your user name.",
    )

    def clean_reason(self):
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("A reason is required.")
        return reason


@dataclass
class _Outcome:
    done: int = 0
    refused: list[str] | None = None

    def refuse(self, action_id, message: str) -> None:
        self.refused = [*(self.refused or []), f"{action_id}: {message}"]


@admin.register(RewardAction)
class RewardActionAdmin(ReadOnlyAdmin):
    list_filter = ("status", "reward_type", "rule", "created_at")
    # Exact matches only: each is an index lookup (an OR across the event join would scan every action).
    search_fields = ("target_user_id__exact",)
    search_help_text = "Exact target user id."
    list_select_related = ("event",)
    ordering = ("-created_at",)
    actions = ["retry_failed", "cancel_with_reason"]
    change_list_template = "admin/connect/rewardaction/change_list.html"
    change_form_template = "admin/connect/rewardaction/change_form.html"

    def get_queryset(self, request):
        version = RuleVersion.objects.filter(rule_id=OuterRef("rule_id"), version=OuterRef("rule_version"))
        return (
            super()
            .get_queryset(request)
            .select_related("event")
            .defer("event__context")  # not shown here; a value stored too deep would not even decode
            .annotate(rule_version_pk=Subquery(version.values("pk")[:1]))
        )

    def _sees_rules(self, request) -> bool:
        return request.user.has_perm("rules.view_ruleversion")

    def get_list_display(self, request):
        # Fits a 1366-pixel screen beside the filters; attempts, params and results are on the action's page.
        return (
            "created_at",
            "target",
            "reward",
            "status_badge",
            "rule_and_version_link" if self._sees_rules(request) else "rule_and_version",
            "event_link",
            "short_error",
        )

    def get_fields(self, request, obj=None):
        # A reversal action names what it takes back and its shortfall; an original what was taken back.
        if obj is not None and obj.reverses_id is not None:
            reversal = ("reverses_link", "shortfall_text")
        elif obj is not None and (obj.reversed_amount or obj.reversal_actions.exists()):
            reversal = ("reversed_amount", "reversal_actions_list")
        else:
            reversal = ()
        return (
            "id",
            "event_link",
            "rule_code",
            "version_link" if self._sees_rules(request) else "rule_version",
            "target",
            "reward_type",
            "amount",
            "params_pretty",
            "status_badge",
            *reversal,
            "locked_until_condition",
            "attempts",
            "next_attempt_at",
            "last_error",
            "result_pretty",
            "created_at",
            "released_at",
            "updated_at",
            "completed_at",
            "cancel_reason",
            "cancelled_by",
        )

    def get_readonly_fields(self, request, obj=None):
        return self.get_fields(request, obj)

    @admin.display(description="Reverses")
    def reverses_link(self, obj: RewardAction):
        original = obj.reverses
        return format_html(
            '<a class="reverses-link" href="{}">{} {} for {}</a> from event <a class="reverses-event" href="{}">{}</a>'
            '<div class="small">This reversal takes back {} of it.</div>',
            reverse("admin:connect_rewardaction_change", args=[original.pk]),
            original.amount,
            original.reward_type,
            original.target_user_id,
            reverse("admin:connect_economicevent_change", args=[original.event_id]),
            breakable(original.event.event_type),
            obj.amount,
        )

    @admin.display(description="Shortfall")
    def shortfall_text(self, obj: RewardAction):
        if obj.shortfall is None:
            return "not known until the reversal is delivered"
        if obj.shortfall == 0:
            return format_html('<span class="shortfall-amount">0</span> (all {} taken back)', obj.amount)
        return format_html(
            '<span class="badge badge-failed shortfall-amount">{}</span> <span class="small">{} taken back; the user '
            "had spent the rest</span>",
            obj.shortfall,
            obj.amount - obj.shortfall,
        )

    @admin.display(description="Reversal actions")
    def reversal_actions_list(self, obj: RewardAction):
        reversals = obj.reversal_actions.select_related("event").only(
            "pk", "amount", "status", "shortfall", "event__event_type", "event__external_id"
        )
        rows = [
            format_html(
                '<div class="reversal-action"><a href="{}">{}</a> takes back {} {}{} — event <a href="{}">{}</a></div>',
                reverse("admin:connect_rewardaction_change", args=[reversal.pk]),
                reversal.pk,
                reversal.amount,
                badge(reversal.status),
                format_html(", short {}", reversal.shortfall) if reversal.shortfall else "",
                reverse("admin:connect_economicevent_change", args=[reversal.event_id]),
                reversal.event.external_id,
            )
            for reversal in reversals.order_by("created_at", "pk")
        ]
        return format_html_join("", "{}", ((row,) for row in rows)) if rows else "— (reduced before delivery)"

    @admin.display(description="Rule version", ordering="rule_version")
    def version_link(self, obj: RewardAction):
        if obj.rule_version_pk is None:
            return f"{obj.rule_code} v{obj.rule_version} (no snapshot)"
        url = reverse("admin:rules_ruleversion_change", args=[obj.rule_version_pk])
        return format_html('<a class="rule-version" href="{}">v{}</a>', url, obj.rule_version)

    @admin.display(description="Rule", ordering="rule_code")
    def rule_and_version(self, obj: RewardAction):
        return format_html("{} v{}", breakable(obj.rule_code), obj.rule_version)

    @admin.display(description="Rule", ordering="rule_code")
    def rule_and_version_link(self, obj: RewardAction):
        if obj.rule_version_pk is None:
            return f"{obj.rule_code} v{obj.rule_version} (no snapshot)"
        url = reverse("admin:rules_ruleversion_change", args=[obj.rule_version_pk])
        return format_html(
            '{} <a class="rule-version" href="{}">v{}</a>', breakable(obj.rule_code), url, obj.rule_version
        )

    @admin.display(description="Event")
    def event_link(self, obj: RewardAction):
        url = reverse("admin:connect_economicevent_change", args=[obj.event_id])
        return format_html('<a href="{}">{}</a>', url, breakable(obj.event.event_type))

    @admin.display(description="Target", ordering="target_user_id")
    def target(self, obj: RewardAction):
        return user_link(obj.target_user_id)

    @admin.display(description="Reward", ordering="amount")
    def reward(self, obj: RewardAction):
        if obj.reward_type == RewardAction.RewardType.NFT:
            badge_text = f"badge {obj.params.get('badge_type', '')}".strip()
            return f"{badge_text} (reversal)" if obj.reverses_id is not None else badge_text
        unit = "points" if obj.reward_type == RewardAction.RewardType.POINTS else "G2A tokens"
        if obj.reverses_id is not None:
            return f"−{obj.amount} {unit} (reversal)"
        return f"{obj.amount} {unit}"

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: RewardAction):
        return badge(obj.status)

    @admin.display(description="Last error")
    def short_error(self, obj: RewardAction):
        return obj.last_error[:60] + ("…" if len(obj.last_error) > 60 else "")

    @admin.display(description="Params")
    def params_pretty(self, obj: RewardAction):
        return _pretty_json(obj.params)

    @admin.display(description="Result")
    def result_pretty(self, obj: RewardAction):
        return _pretty_json(obj.result)

    # permissions of the staff actions (SPEC §11): retry — superuser, rule editors, finance;
    # cancel — superuser and finance.
    def has_retry_permission(self, request, obj=None):
        return request.user.has_perm("connect.retry_rewardaction")

    def has_cancel_permission(self, request, obj=None):
        return request.user.has_perm("connect.cancel_rewardaction")

    def _too_many(self, request, queryset) -> bool:
        if queryset.count() > MAX_ACTIONS_PER_REQUEST:
            messages.error(request, f"Select at most {MAX_ACTIONS_PER_REQUEST} actions at a time.")
            return True
        return False

    def _retry(self, request, action_ids) -> _Outcome:
        outcome = _Outcome()
        for action_id in action_ids:
            try:
                reward_action_retry(action_id=action_id, user=request.user)
            except DomainError as exc:
                outcome.refuse(action_id, exc.message)
            else:
                outcome.done += 1
        if outcome.done:
            messages.success(request, f"Retried {outcome.done} failed action(s); they are being dispatched again.")
        for refusal in outcome.refused or []:
            messages.warning(request, f"Not retried: {refusal}")
        return outcome

    def _cancel(self, request, action_ids, reason: str) -> _Outcome:
        outcome = _Outcome()
        for action_id in action_ids:
            try:
                reward_action_cancel(action_id=action_id, reason=reason, user=request.user)
            except DomainError as exc:
                outcome.refuse(action_id, exc.message)
            else:
                outcome.done += 1
        if outcome.done:
            messages.success(request, f"Cancelled {outcome.done} action(s).")
        for refusal in outcome.refused or []:
            messages.warning(request, f"Not cancelled: {refusal}")
        return outcome

    @admin.action(description="Retry selected failed actions", permissions=["retry"])
    def retry_failed(self, request, queryset):
        if self._too_many(request, queryset):
            return None
        self._retry(request, list(queryset.values_list("pk", flat=True)))
        return None

    @admin.action(description="Cancel selected actions (asks for a reason)", permissions=["cancel"])
    def cancel_with_reason(self, request, queryset):
        if self._too_many(request, queryset):
            return None
        form = CancelForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            self._cancel(request, list(queryset.values_list("pk", flat=True)), form.cleaned_data["reason"])
            return None
        return self._cancel_page(request, list(queryset.select_related("event")), form, bulk=True)

    def _cancel_page(self, request, actions, form, *, bulk: bool):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Cancel reward actions",
            "actions_to_cancel": actions,
            "form": form,
            "bulk": bulk,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/connect/rewardaction/cancel.html", context)

    # one action, from its page
    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("dashboard/", view(self.dashboard_view), name="connect_dashboard"),
            path("<uuid:action_id>/retry/", view(self.retry_view), name="connect_rewardaction_retry"),
            path("<uuid:action_id>/cancel/", view(self.cancel_view), name="connect_rewardaction_cancel"),
            *super().get_urls(),
        ]

    def _action_or_404(self, action_id) -> RewardAction:
        action = RewardAction.objects.select_related("event").filter(pk=action_id).first()
        if action is None:
            raise Http404("No such reward action.")
        return action

    def retry_view(self, request, action_id):
        if not self.has_retry_permission(request):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        self._retry(request, [self._action_or_404(action_id).pk])
        return HttpResponseRedirect(reverse("admin:connect_rewardaction_change", args=[action_id]))

    def cancel_view(self, request, action_id):
        if not self.has_cancel_permission(request):
            raise PermissionDenied
        action = self._action_or_404(action_id)
        form = CancelForm(request.POST if request.method == "POST" else None)
        if form.is_bound and form.is_valid():
            self._cancel(request, [action.pk], form.cleaned_data["reason"])
            return HttpResponseRedirect(reverse("admin:connect_rewardaction_change", args=[action.pk]))
        return self._cancel_page(request, [action], form, bulk=False)

    def changelist_view(self, request, extra_context=None):
        extra_context = {"channel_warnings": _waiting_by_channel(), **(extra_context or {})}
        return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        action = RewardAction.objects.filter(pk=object_id).only("status").first() if _is_uuid(object_id) else None
        extra_context = {
            "channel_warnings": _waiting_by_channel(),
            "can_retry": action is not None
            and action.status == RewardAction.Status.FAILED
            and self.has_retry_permission(request),
            "can_cancel": action is not None
            and action.status in (RewardAction.Status.LOCKED, RewardAction.Status.PENDING, RewardAction.Status.FAILED)
            and self.has_cancel_permission(request),
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    # dashboard
    def dashboard_view(self, request):
        if not (request.user.has_perm("points.view_transaction") and self.has_view_permission(request)):
            raise PermissionDenied
        first_day, last_day = dashboard_range(request)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Dashboard",
            **dashboard_data(first_day=first_day, last_day=last_day),
            "channel_warnings": _waiting_by_channel(),
        }
        return TemplateResponse(request, "admin/connect/dashboard.html", context)


def _is_uuid(value) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


@admin.register(UserProfile)
class UserProfileAdmin(ReadOnlyAdmin):
    list_display = ("user", "sponsor", "tier_badge", "updated_at")
    list_filter = ("is_vip", "is_pro")
    search_fields = ("user_id__exact", "sponsor_id__exact")
    search_help_text = "Exact user id or sponsor id."
    ordering = ("user_id",)

    @admin.display(description="User", ordering="user_id")
    def user(self, obj: UserProfile):
        return user_link(obj.user_id)

    @admin.display(description="Sponsor", ordering="sponsor_id")
    def sponsor(self, obj: UserProfile):
        return user_link(obj.sponsor_id)

    @admin.display(description="Tier")
    def tier_badge(self, obj: UserProfile):
        return badge(obj.tier)


# --- the rule simulator's view of users ----------------------------------------------------


def _profile_facts(user_ids) -> dict:
    return {
        profile.user_id: (profile.is_vip, profile.is_pro, profile.sponsor_id)
        for profile in UserProfile.objects.filter(user_id__in=[u for u in user_ids if u])
    }


def _granted_without_lock(line_id: int, target_user_id: str) -> int:
    # Ingestion locks this counter row; a simulation only reads it, so it never waits on or blocks a writer.
    return (
        RewardGrant.objects.filter(reward_line_id=line_id, target_user_id=target_user_id)
        .values_list("count", flat=True)
        .first()
        or 0
    )


@contextmanager
def simulation_world(event: engine.EventInput):
    """Users as ingestion would see them for ``event``: its own profile updates applied first (then
    rolled back), the referral tree, and max_per_target counts read without locking."""
    users = [event.actor_user_id, event.primary_subject_user_id]
    with transaction.atomic():
        try:
            before = _profile_facts(users)
            unsaved = EconomicEvent(
                event_type=event.event_type,
                actor_user_id=event.actor_user_id,
                primary_subject_user_id=event.primary_subject_user_id,
                context=event.context,
                occurred_at=event.occurred_at,
                received_at=event.received_at,
            )
            released = profile_apply(event=unsaved)
            after = _profile_facts(users)
            notes = []
            for user_id in dict.fromkeys(u for u in users if u):
                old, new = before.get(user_id), after.get(user_id)
                if old == new:
                    continue
                old_vip, old_pro, old_sponsor = old or (False, False, None)
                vip, pro, sponsor = new
                if vip != old_vip:
                    notes.append(f"This event would make {user_id} VIP.")
                if pro != old_pro:
                    notes.append(f"This event would make {user_id} PRO.")
                if sponsor != old_sponsor:
                    notes.append(f"This event would record {sponsor} as the sponsor of {user_id}.")
            if released:
                notes.append(f"It would release {len(released)} locked action(s) of {event.actor_user_id} to pending.")
            if not notes:
                notes.append("This event changes no profile.")
            reader = ProfileReader()
            yield SimulationWorld(
                profile=reader.profile,
                upline=reader.upline,
                granted_count=_granted_without_lock,
                notes=notes,
                period_count=period_count_without_lock,
                budget_used=budget_used_without_lock,
            )
        finally:
            transaction.set_rollback(True)


simulation_world_register(simulation_world)
rules_admin_sources.register()


# --- dashboard -------------------------------------------------------------------------------

SERIES_COLOURS = ("#417690", "#e0a800", "#5b9e4d", "#b0413e", "#7b61a8", "#2a9d8f", "#d17a22", "#8a8a8a")
STATUS_COLOURS = {
    "locked": "#7b61a8",
    "pending": "#e0a800",
    "dispatched": "#417690",
    "completed": "#5b9e4d",
    "failed": "#b0413e",
    "cancelled": "#8a8a8a",
}
CHART_WIDTH, CHART_HEIGHT, CHART_LEFT, CHART_BOTTOM = 760, 220, 56, 24


def _issued_by_rule(since, until) -> tuple[list, dict]:
    """Points credited per day in the ledger since ``since``, per rule (others as "other credits").

    One aggregate over the credits of the period, read through the (kind, created_at) index.
    """
    label = Case(
        When(reason__startswith=REWARD_REASON_PREFIX, then=F("reason")),
        default=Value("other credits"),
        output_field=CharField(),
    )
    rows = (
        Transaction.objects.filter(kind=Transaction.Kind.CREDIT, created_at__gte=since, created_at__lt=until)
        .annotate(day=TruncDate("created_at"), label=label)
        .values("day", "label")
        .annotate(points=Sum("amount"))
        .order_by()
    )
    per_day: dict = {}
    for row in rows:
        name = row["label"].removeprefix(REWARD_REASON_PREFIX)
        per_day.setdefault(row["day"], {})
        per_day[row["day"]][name] = per_day[row["day"]].get(name, 0) + row["points"]
    return rows, per_day


def _issued_chart(days: list, per_day: dict) -> dict:
    totals_by_series: dict[str, int] = {}
    for values in per_day.values():
        for name, points in values.items():
            totals_by_series[name] = totals_by_series.get(name, 0) + points
    ranked = sorted(totals_by_series, key=lambda name: (-totals_by_series[name], name))
    shown = ranked[:DASHBOARD_MAX_SERIES]
    series = shown + (["other rules"] if len(ranked) > len(shown) else [])
    colours = {name: SERIES_COLOURS[index % len(SERIES_COLOURS)] for index, name in enumerate(series)}

    def grouped(values: dict) -> dict:
        out: dict[str, int] = {}
        for name, points in values.items():
            key = name if name in shown else "other rules"
            out[key] = out.get(key, 0) + points
        return out

    daily = [(day, grouped(per_day.get(day, {}))) for day in days]
    peak = max((sum(values.values()) for _, values in daily), default=0) or 1
    plot_width = CHART_WIDTH - CHART_LEFT
    plot_height = CHART_HEIGHT - CHART_BOTTOM
    slot = plot_width / max(len(days), 1)
    label_every = max(5, -(-len(days) // 8))
    bars = []
    for index, (day, values) in enumerate(daily):
        x = CHART_LEFT + index * slot + 1
        y = plot_height
        segments = []
        for name in series:
            points = values.get(name, 0)
            if not points:
                continue
            height = points / peak * (plot_height - 10)
            y -= height
            segments.append(
                {"x": round(x, 1), "y": round(y, 1), "w": round(slot - 2, 1), "h": round(height, 1),
                 "colour": colours[name], "title": f"{day:%Y-%m-%d} {name}: {points} points"}
            )  # fmt: skip
        bars.append(
            {
                "day": day,
                "total": sum(values.values()),
                "segments": segments,
                # the last label ends at the right edge instead of being cut by it
                "label_x": round(x + (slot - 2) if index == len(daily) - 1 else x + (slot - 2) / 2, 1),
                "label_anchor": "end" if index == len(daily) - 1 else "middle",
                "show_label": index % label_every == 0 or index == len(daily) - 1,
            }
        )
    return {
        "bars": bars,
        "legend": [{"name": name, "colour": colours[name], "total": _series_total(daily, name)} for name in series],
        "peak": peak,
        "grid": [{"y": round(plot_height - f * (plot_height - 10), 1), "value": round(peak * f)} for f in (0.5, 1)],
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "left": CHART_LEFT,
        "baseline": plot_height,
        "total": sum(bar["total"] for bar in bars),
    }


def _series_total(daily, name) -> int:
    return sum(values.get(name, 0) for _, values in daily)


def dashboard_range(request, *, now=None) -> tuple[date, date]:
    """The days the dashboard covers: ``from``/``to`` of the query (inclusive, at most
    DASHBOARD_MAX_DAYS), else the last DASHBOARD_DAYS days. A bad range says why and falls back."""
    today = timezone.localdate(now or timezone.now())
    default = (today - timedelta(days=DASHBOARD_DAYS - 1), today)
    try:
        first = date.fromisoformat(request.GET["from"]) if request.GET.get("from") else default[0]
        last = date.fromisoformat(request.GET["to"]) if request.GET.get("to") else default[1]
    except ValueError:
        messages.error(request, "Dates are YYYY-MM-DD; showing the last 30 days.")
        return default
    if first > last or (last - first).days >= DASHBOARD_MAX_DAYS:
        messages.error(
            request, f"Pick a range of 1 to {DASHBOARD_MAX_DAYS} days, from before to; showing the last 30 days."
        )
        return default
    return first, last


def dashboard_data(*, now=None, first_day: date | None = None, last_day: date | None = None) -> dict:
    """Everything the dashboard shows for the days ``first_day``..``last_day`` (inclusive; default the
    last DASHBOARD_DAYS days); each figure is one bounded aggregate query."""
    now = now or timezone.now()
    last_day = last_day or timezone.localdate(now)
    first_day = first_day or last_day - timedelta(days=DASHBOARD_DAYS - 1)
    since, until = day_start(first_day), day_start(last_day + timedelta(days=1))
    days = [first_day + timedelta(days=n) for n in range((last_day - first_day).days + 1)]
    _, per_day = _issued_by_rule(since, until)

    by_status = dict(
        RewardAction.objects.filter(created_at__gte=since, created_at__lt=until)
        .values_list("status")
        .annotate(n=Count("pk"))
        .order_by()
    )
    status_peak = max(by_status.values(), default=0) or 1
    statuses = [
        {
            "status": value,
            "label": label,
            "count": by_status.get(value, 0),
            "percent": round(by_status.get(value, 0) / status_peak * 100, 1),
            "colour": STATUS_COLOURS[value],
            "url": reverse("admin:connect_rewardaction_changelist")
            + "?"
            + urlencode(
                {"status__exact": value, "created_at__gte": since.isoformat(), "created_at__lt": until.isoformat()}
            ),
        }
        for value, label in RewardAction.Status.choices
    ]
    # All-time counts of what needs staff attention: each an index range on status.
    attention = {
        name: RewardAction.objects.filter(status=status).count()
        for name, status in (("failed", RewardAction.Status.FAILED), ("locked", RewardAction.Status.LOCKED))
    }
    largest = list(
        Account.objects.filter(kind=Account.Kind.USER).order_by("-balance", "user_id")[:DASHBOARD_TOP_BALANCES]
    )
    balance_peak = max((account.balance for account in largest), default=0) or 1
    return {
        "days": len(days),
        "since": first_day,
        "until": last_day,
        "issued": _issued_chart(days, per_day),
        "statuses": statuses,
        "failed_count": attention["failed"],
        "locked_count": attention["locked"],
        "failed_url": reverse("admin:connect_rewardaction_changelist") + "?status__exact=failed",
        "locked_url": reverse("admin:connect_rewardaction_changelist") + "?status__exact=locked",
        "largest": [
            {
                "account": account,
                "percent": round(max(account.balance, 0) / balance_peak * 100, 1),
                "url": reverse("admin:points_account_statement", args=[account.pk]),
                "user_url": reverse("admin_user_page", args=[account.user_id]),
            }
            for account in largest
        ],
    }


from . import admin_backtest  # noqa: E402,F401  (registers the backtest admin)
