import json

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from simple_history.admin import SimpleHistoryAdmin

from .forms import RewardLineForm, RewardLineInlineFormSet, RuleAdminForm, RulesImportForm
from .models import RewardLine, Rule, RuleVersion
from .services import RulesImportError, rule_version_bump, rules_export, rules_import


def _json_download(payload: dict, filename: str) -> HttpResponse:
    response = HttpResponse(
        json.dumps(payload, indent=2, ensure_ascii=False) + "\n", content_type="application/json; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _export_filename() -> str:
    return f"rules-{timezone.now():%Y%m%d-%H%M%S}.json"


class RewardLineInline(admin.TabularInline):
    model = RewardLine
    form = RewardLineForm
    formset = RewardLineInlineFormSet
    fields = ("position", "target", "reward_type", "amount", "params", "lock_condition", "max_per_target")
    extra = 0
    min_num = 1

    def get_formset(self, request, obj=None, **kwargs):
        kwargs.setdefault("validate_min", True)
        return super().get_formset(request, obj, **kwargs)


@admin.register(Rule)
class RuleAdmin(SimpleHistoryAdmin):
    form = RuleAdminForm
    inlines = [RewardLineInline]
    change_list_template = "admin/rules/rule/change_list.html"
    list_display = (
        "code",
        "name",
        "event_type",
        "priority",
        "is_active",
        "stop_processing",
        "valid_from",
        "valid_until",
        "version",
        "updated_at",
    )
    list_filter = ("event_type", "is_active", "stop_processing")
    search_fields = ("code", "name")
    ordering = ("event_type", "priority", "code")
    readonly_fields = ("version", "versions_link", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("code", "name", "description", "event_type", "condition")}),
        ("Order and validity", {"fields": ("priority", "stop_processing", "is_active", "valid_from", "valid_until")}),
        ("Versions", {"fields": ("version", "versions_link", "created_at", "updated_at")}),
    )
    actions = ["export_selected"]

    @admin.display(description="Stored versions")
    def versions_link(self, obj: Rule):
        if obj.pk is None:
            return "—"
        url = reverse("admin:rules_ruleversion_changelist") + f"?rule__id__exact={obj.pk}"
        return format_html('<a href="{}">All versions of {}</a>', url, obj.code)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        # The rule and its lines are saved; record a version if the rule's JSON form changed.
        rule_version_bump(form.instance, request.user)

    @admin.action(description="Export selected rules as JSON")
    def export_selected(self, request, queryset):
        codes = list(queryset.values_list("code", flat=True))
        return _json_download(rules_export(codes=codes), _export_filename())

    def get_urls(self):
        return [
            path("import/", self.admin_site.admin_view(self.import_view), name="rules_rule_import"),
            path("export/", self.admin_site.admin_view(self.export_view), name="rules_rule_export"),
            *super().get_urls(),
        ]

    def export_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        return _json_download(rules_export(), _export_filename())

    def import_view(self, request):
        if not (self.has_add_permission(request) and self.has_change_permission(request)):
            raise PermissionDenied
        report = None
        if request.method == "POST":
            form = RulesImportForm(request.POST, request.FILES)
            if form.is_valid():
                try:
                    report = rules_import(
                        payload=form.cleaned_data["payload"], user=request.user, dry_run=form.cleaned_data["dry_run"]
                    )
                except RulesImportError as exc:
                    report = exc.report
                    messages.error(request, str(exc))
                else:
                    if report.written:
                        messages.success(request, report.lines()[-1])
                    else:
                        messages.info(request, report.lines()[-1])
        else:
            form = RulesImportForm()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Import rules",
            "form": form,
            "report": report,
        }
        return TemplateResponse(request, "admin/rules/rule/import.html", context)


@admin.register(RuleVersion)
class RuleVersionAdmin(admin.ModelAdmin):
    """Versions are written by the rule services only; here they are read."""

    list_display = ("rule", "version", "created_at", "created_by")
    list_filter = ("created_at",)
    search_fields = ("rule__code",)
    list_select_related = ("rule", "created_by")
    fields = ("rule", "version", "created_at", "created_by", "snapshot_pretty")
    readonly_fields = fields

    @admin.display(description="Rule at this version (export JSON)")
    def snapshot_pretty(self, obj: RuleVersion):
        return format_html("<pre>{}</pre>", json.dumps(obj.snapshot, indent=2, ensure_ascii=False))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
