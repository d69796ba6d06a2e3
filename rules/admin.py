"""The rule editor: rules with their reward lines, versions with diffs, import/export and the simulator.

Writes go through ``rules.services`` (import, enable/disable, version bump); the simulator writes nothing.
What the simulator may read about users (profiles, the referral tree, how many rewards a line already
granted) belongs to the app that keeps those records; it registers a provider with
``simulation_world_register`` (``rules`` imports no app that depends on it).
"""

import difflib
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

from django.contrib import admin, messages
from django.core import signing
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import Http404, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from simple_history.admin import SimpleHistoryAdmin

from . import engine
from .admin_columns import RuleChangeList, RuleColumns, budget_status_text
from .drafts import drafts_of_rule
from .expressions import ProfileView
from .forms import (
    ImportConfirmForm,
    RewardLineForm,
    RewardLineInlineFormSet,
    RuleAdminForm,
    RulesImportForm,
)
from .models import RewardLine, Rule, RuleVersion
from .services import (
    LINE_KEYS,
    RULE_KEYS,
    RulesImportError,
    UnknownRuleVersion,
    rule_as_dict,
    rule_from_dict,
    rule_save_from_dict,
    rule_version_restore,
    rules_export,
    rules_import,
)
from .simulator_page import simulator_page

IMPORT_SIGNING_SALT = "rules.admin.import"
IMPORT_CONFIRM_MAX_AGE = 60 * 60


def _json_download(payload: dict, filename: str) -> HttpResponse:
    response = HttpResponse(
        json.dumps(payload, indent=2, ensure_ascii=False) + "\n", content_type="application/json; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _export_filename() -> str:
    return f"rules-{timezone.now():%Y%m%d-%H%M%S}.json"


def _in_file_order(rule: dict) -> dict:
    """A rule's JSON form with its keys in the export file's order (stored snapshots come back from
    jsonb with their keys reordered)."""

    def ordered(data: dict, keys) -> dict:
        rank = {key: index for index, key in enumerate(keys)}
        return dict(sorted(data.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))

    out = ordered(rule, ("code", "name", "description", *RULE_KEYS))
    if isinstance(out.get("rewards"), list):
        out["rewards"] = [ordered(line, LINE_KEYS) if isinstance(line, dict) else line for line in out["rewards"]]
    return out


def json_diff(old: dict | None, new: dict | None) -> list[tuple[str, str]]:
    """A unified line diff of two rules' JSON forms as (kind, line): kind is "add", "del", "hunk" or
    "same"; each line keeps its diff prefix (+, -, space)."""

    def lines(value):
        if value is None:
            return []
        return json.dumps(_in_file_order(value), indent=2, ensure_ascii=False).splitlines()

    out = []
    for line in difflib.unified_diff(lines(old), lines(new), lineterm="", n=2):
        if line.startswith(("+++", "---")):
            continue
        kind = {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "same")
        out.append((kind, line))
    return out


_DIFF_STYLES = {
    "add": "background:#e6ffec;color:#1a7f37",
    "del": "background:#ffebe9;color:#cf222e",
    "hunk": "color:#8250df",
    "same": "",
}


def diff_html(diff: list[tuple[str, str]]) -> str:
    """A json_diff as a <pre> block, additions green and removals red."""
    rows = format_html_join(
        "", '<span class="diff-{}" style="display:block;{}">{}</span>', ((k, _DIFF_STYLES[k], t) for k, t in diff)
    )
    return format_html('<pre class="diff" style="white-space:pre-wrap">{}</pre>', rows)


# --- simulation world ------------------------------------------------------------------------


@dataclass
class SimulationWorld:
    """What the engine may read while simulating, and what the event would do before the rules run."""

    profile: Callable[[str], ProfileView | None]
    upline: Callable[[str, int], str | None]
    granted_count: Callable[[int, str], int]
    notes: list[str] = field(default_factory=list)
    # Periodic caps and budgets as the counters hold them (default: nothing counted yet).
    period_count: Callable[[int, str, str], int] = lambda line_id, target, key: 0
    budget_used: Callable[[int, str], int] = lambda rule_id, key: 0


SimulationProvider = Callable[[engine.EventInput], AbstractContextManager[SimulationWorld]]


@contextmanager
def _world_without_users(event: engine.EventInput) -> Iterator[SimulationWorld]:
    yield SimulationWorld(
        profile=lambda user_id: None,
        upline=lambda user_id, n: None,
        granted_count=lambda line_id, target: 0,
        notes=["No user records are available to the simulator: every profile is unknown."],
    )


_simulation_provider: SimulationProvider = _world_without_users


def simulation_world_register(provider: SimulationProvider) -> None:
    """Install what the simulator reads users from: a context manager taking the event, yielding a
    SimulationWorld, and guaranteeing that nothing it does is kept (it rolls back)."""
    global _simulation_provider
    _simulation_provider = provider


@dataclass
class Simulation:
    plan: engine.Plan | None
    failure: str | None
    rules: list[Rule]
    notes: list[str]
    profiles: list[tuple[str, ProfileView | None]]

    @property
    def trace(self) -> list[dict]:
        """The engine's trace with each line's reward type, ready for the page."""
        types = {(rule.code, line.position): line.reward_type for rule in self.rules for line in rule.rewards.all()}
        return [
            {
                "rule": trace,
                "lines": [
                    {"line": line, "reward_type": types.get((trace.rule_code, line.position), "")}
                    for line in trace.lines
                ],
            }
            for trace in (self.plan.trace if self.plan else ())
        ]

    @property
    def actions(self) -> list[dict]:
        return [
            {"action": action, "params": json.dumps(action.params, ensure_ascii=False, sort_keys=True)}
            for action in (self.plan.actions if self.plan else ())
        ]


def simulate(event: engine.EventInput) -> Simulation:
    """Run the engine on ``event`` against every rule of its type (inactive ones included, so the
    trace says why they did not run). Nothing is written."""
    rules = list(
        Rule.objects.filter(event_type=event.event_type).order_by("priority", "code").prefetch_related("rewards")
    )
    with transaction.atomic():
        try:
            with _simulation_provider(event) as world:
                failure = None
                try:
                    plan = engine.plan(
                        event=event,
                        rules=rules,
                        profile=world.profile,
                        upline=world.upline,
                        granted_count=world.granted_count,
                        period_count=world.period_count,
                        budget_used=world.budget_used,
                    )
                except engine.RuleEvaluationFailed as exc:
                    plan, failure = None, f"Rule '{exc.rule_code}' could not be evaluated: {exc.message}"
                users = [event.actor_user_id, event.primary_subject_user_id]
                users += [action.target_user_id for action in (plan.actions if plan else ())]
                for user_id in list(users):
                    sponsor = world.upline(user_id, 1) if user_id else None
                    if sponsor:
                        users.append(sponsor)
                seen: dict[str, ProfileView | None] = {}
                for user_id in users:
                    if user_id and user_id not in seen:
                        seen[user_id] = world.profile(user_id)
                notes = list(world.notes)
        finally:
            # Whatever the provider or the engine touched is rolled back: the simulator writes nothing.
            transaction.set_rollback(True)
    return Simulation(plan=plan, failure=failure, rules=rules, notes=notes, profiles=list(seen.items()))


# --- admin -----------------------------------------------------------------------------------


class RewardLineInline(admin.TabularInline):
    model = RewardLine
    form = RewardLineForm
    formset = RewardLineInlineFormSet
    fields = (
        "position",
        "target",
        "reward_type",
        "amount",
        "params",
        "lock_condition",
        "max_per_target",
        "max_per_target_per_period",
        "period",
    )
    extra = 0
    min_num = 1

    def get_formset(self, request, obj=None, **kwargs):
        kwargs.setdefault("validate_min", True)
        return super().get_formset(request, obj, **kwargs)


@admin.register(Rule)
class RuleAdmin(RuleColumns, SimpleHistoryAdmin):
    form = RuleAdminForm
    inlines = [RewardLineInline]
    change_list_template = "admin/rules/rule/change_list.html"
    change_form_template = "admin/rules/rule/change_form.html"
    object_history_template = "admin/rules/rule/object_history.html"
    # What a rule pays and did lately; its window, flags and dates are on its page (fits 1366 pixels).
    list_display = ("rule", "type", "pays", "active", "priority", "fired_30d", "points_30d", "budget_left")
    list_display_links = ("rule",)
    list_filter = ("event_type", "is_active", "stop_processing")
    search_fields = ("code", "name")
    ordering = ("event_type", "priority", "code")
    readonly_fields = ("version", "versions_link", "created_at", "updated_at", "budget_this_period")
    fieldsets = (
        (None, {"fields": ("code", "name", "description", "event_type", "condition")}),
        ("Order and validity", {"fields": ("priority", "stop_processing", "is_active", "valid_from", "valid_until")}),
        ("Budget", {"fields": ("budget", "budget_period", "budget_policy", "budget_this_period")}),
        ("Versions", {"fields": ("version", "versions_link", "created_at", "updated_at")}),
    )
    actions = ["export_selected", "enable_selected", "disable_selected", "draft_selected"]

    @admin.display(description="Budget used / left (this period)")
    def budget_this_period(self, obj: Rule):
        return budget_status_text(obj)

    @admin.display(description="Stored versions")
    def versions_link(self, obj: Rule):
        if obj.pk is None:
            return "—"
        url = reverse("admin:rules_ruleversion_changelist") + f"?rule__id__exact={obj.pk}"
        return format_html('<a href="{}">All versions of {}</a>', url, obj.code)

    def get_changelist(self, request, **kwargs):
        return RuleChangeList

    def get_readonly_fields(self, request, obj=None):
        fields = super().get_readonly_fields(request, obj)
        # The code is the rule's identity in rule files and in every action's ``rule``: fixed once made.
        return (*fields, "code") if obj is not None else fields

    def save_model(self, request, obj, form, change):
        """Nothing here: the rule is written with its lines in ``save_related``, through the service."""

    def save_related(self, request, form, formsets, change):
        # One write path for rules (edit, import, enable/disable, restore): the rule service, which
        # writes the rule and its lines together and alone computes the version number.
        data = next(formset.rule_data for formset in formsets if hasattr(formset, "rule_data"))
        rule, _ = rule_save_from_dict(data=data, user=request.user)
        form.instance.pk, form.instance.version = rule.pk, rule.version
        form.instance._state.adding = False
        for formset in formsets:  # what construct_change_message reads after a formset's own save
            formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []

    def revert_disabled(self, request, obj=None):
        # simple_history's revert restores the rule's fields only (not its lines) and moves the
        # version back; "Restore this version" on the history page replaces it.
        return True

    def history_form_view(self, request, object_id, version_id, extra_context=None):
        if request.method != "GET":
            raise PermissionDenied
        return super().history_form_view(request, object_id, version_id, extra_context)

    def restore_view(self, request, object_id, version: int):
        rule = self.get_object(request, object_id)
        if rule is None:
            raise Http404
        if request.method != "POST" or not self.has_change_permission(request, rule):
            raise PermissionDenied
        history_url = reverse("admin:rules_rule_history", args=[rule.pk])
        try:
            rule, status = rule_version_restore(rule=rule, version=version, user=request.user)
        except UnknownRuleVersion as exc:
            messages.error(request, str(exc))
        except ValidationError as exc:
            messages.error(request, f"Version {version} cannot be restored: {'; '.join(exc.messages)}")
        else:
            if status == "unchanged":
                messages.info(request, f"{rule.code} already is version {version}; nothing changed.")
            else:
                messages.success(
                    request, f"Restored {rule.code} as it was at version {version}: now version {rule.version}."
                )
        return HttpResponseRedirect(history_url)

    @admin.action(description="Export selected rules as JSON", permissions=["view"])
    def export_selected(self, request, queryset):
        codes = list(queryset.values_list("code", flat=True))
        return _json_download(rules_export(codes=codes), _export_filename())

    def _set_active(self, request, queryset, active: bool):
        changed = 0
        for rule in queryset.prefetch_related("rewards"):
            if rule.is_active == active:
                continue
            data = rule_as_dict(rule) | {"is_active": active}
            try:
                rule_save_from_dict(data=data, user=request.user)
            except ValidationError as exc:
                messages.error(request, f"{rule.code}: {'; '.join(exc.messages)}")
            else:
                changed += 1
        word = "Enabled" if active else "Disabled"
        messages.success(request, f"{word} {changed} rule(s); each change is a new version.")

    @admin.action(description="Start a draft from each selected rule", permissions=["change"])
    def draft_selected(self, request, queryset):
        from .drafts import draft_from_rule

        drafts = [draft_from_rule(rule=rule, author=request.user) for rule in queryset.prefetch_related("rewards")]
        messages.success(request, f"Started {len(drafts)} draft(s); edit, backtest and publish them under Rule drafts.")

    @admin.action(description="Enable selected rules", permissions=["change"])
    def enable_selected(self, request, queryset):
        self._set_active(request, queryset, True)

    @admin.action(description="Disable selected rules", permissions=["change"])
    def disable_selected(self, request, queryset):
        self._set_active(request, queryset, False)

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("import/", view(self.import_view), name="rules_rule_import"),
            path("export/", view(self.export_view), name="rules_rule_export"),
            path("simulate/", view(self.simulate_view), name="rules_rule_simulate"),
            path("<path:object_id>/restore/<int:version>/", view(self.restore_view), name="rules_rule_restore"),
            *super().get_urls(),
        ]

    def export_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        return _json_download(rules_export(), _export_filename())

    def _context(self, request, title: str, **extra) -> dict:
        return {**self.admin_site.each_context(request), "opts": self.opts, "title": title, **extra}

    # import: upload → preview (dry run, with a diff per rule) → confirm → all-or-nothing write
    def import_view(self, request):
        if not (self.has_add_permission(request) and self.has_change_permission(request)):
            raise PermissionDenied
        report = preview = confirm_form = None
        form = RulesImportForm()
        if request.method == "POST" and "confirm" in request.POST:
            confirmed = ImportConfirmForm(request.POST)
            payload = None
            if confirmed.is_valid():
                try:
                    payload = signing.loads(
                        confirmed.cleaned_data["confirm"], salt=IMPORT_SIGNING_SALT, max_age=IMPORT_CONFIRM_MAX_AGE
                    )
                except signing.BadSignature:
                    payload = None
            if payload is None:
                messages.error(request, "The preview expired or was altered; upload the file again.")
            else:
                report = self._import(request, payload, dry_run=False)
                if report.written:
                    return HttpResponseRedirect(reverse("admin:rules_rule_changelist"))
        elif request.method == "POST":
            form = RulesImportForm(request.POST, request.FILES)
            if form.is_valid():
                payload = form.cleaned_data["payload"]
                report = self._import(request, payload, dry_run=form.cleaned_data["dry_run"])
                if report.dry_run and report.ok:
                    preview = self._preview(payload, report)
                    token = signing.dumps(payload, salt=IMPORT_SIGNING_SALT, compress=True)
                    confirm_form = ImportConfirmForm(initial={"confirm": token})
        context = self._context(
            request, "Import rules", form=form, report=report, preview=preview, confirm_form=confirm_form
        )
        return TemplateResponse(request, "admin/rules/rule/import.html", context)

    def _import(self, request, payload, *, dry_run: bool):
        try:
            report = rules_import(payload=payload, user=request.user, dry_run=dry_run)
        except RulesImportError as exc:
            messages.error(request, str(exc))
            return exc.report
        if report.written:
            messages.success(request, report.lines()[-1])
        else:
            messages.info(request, report.lines()[-1] + " Check the changes below, then confirm.")
        return report

    def _preview(self, payload: dict, report) -> list[dict]:
        """Per rule of the file: its status and the diff between the stored rule and the file's."""
        current = {
            rule.code: rule for rule in Rule.objects.filter(code__in=report.replaced).prefetch_related("rewards")
        }
        items = []
        for item, entry in zip(report.items, payload["rules"], strict=True):
            diff = []
            if item.status.value == "replaced":
                rule, lines = rule_from_dict(data=entry)
                diff = json_diff(rule_as_dict(current[item.code]), rule_as_dict(rule, lines))
            elif item.status.value == "created":
                rule, lines = rule_from_dict(data=entry)
                diff = json_diff(None, rule_as_dict(rule, lines))
            items.append({"code": item.code, "status": item.status.value, "version": item.version, "diff": diff})
        return items

    # simulator
    def simulate_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = self._context(request, "Rule simulator", **simulator_page(request, simulate=simulate))
        return TemplateResponse(request, "admin/rules/rule/simulate.html", context)

    # history: simple-history's field changes, plus every stored version with a diff against the previous one
    def history_view(self, request, object_id, extra_context=None):
        versions = list(
            RuleVersion.objects.filter(rule_id=object_id).select_related("created_by").order_by("-version")
            if str(object_id).isdigit()
            else []
        )
        rule = Rule.objects.filter(pk=object_id).first() if str(object_id).isdigit() else None
        drafts = {
            draft.published_version: draft
            for draft in (drafts_of_rule(code=rule.code).filter(status="published") if rule else [])
        }
        diffs = [
            {
                "version": version,
                "diff": json_diff(older.snapshot if older else None, version.snapshot),
                "draft": drafts.get(version.version),
            }
            for version, older in zip(versions, [*versions[1:], None], strict=True)
        ]
        extra_context = {
            "version_diffs": diffs,
            "can_restore": self.has_change_permission(request, self.get_object(request, object_id)),
            **(extra_context or {}),
        }
        return super().history_view(request, object_id, extra_context)


@admin.register(RuleVersion)
class RuleVersionAdmin(admin.ModelAdmin):
    """Versions are written by the rule services only; here they are read."""

    list_display = ("rule", "version", "created_at", "created_by")
    list_filter = ("created_at",)
    search_fields = ("rule__code",)
    list_select_related = ("rule", "created_by")
    fields = ("rule", "version", "created_at", "created_by", "changes", "snapshot_pretty")
    readonly_fields = fields

    @admin.display(description="Rule at this version (export JSON)")
    def snapshot_pretty(self, obj: RuleVersion):
        return format_html("<pre>{}</pre>", json.dumps(obj.snapshot, indent=2, ensure_ascii=False))

    @admin.display(description="Changes from the previous version")
    def changes(self, obj: RuleVersion):
        previous = RuleVersion.objects.filter(rule_id=obj.rule_id, version__lt=obj.version).order_by("-version").first()
        diff = json_diff(previous.snapshot if previous else None, obj.snapshot)
        if not diff:
            return "No change."
        title = f"from v{previous.version}" if previous else "first version"
        return format_html('<div class="rule-diff" title="{}">{}</div>', title, diff_html(diff))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


from . import admin_drafts  # noqa: E402,F401  (registers the draft admin)
