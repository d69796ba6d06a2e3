"""The rules list's columns: who the rule is, what it pays in words, and what it did in the last
30 days (fired, points paid) and its budget left, read for a page of rules at once."""

from datetime import timedelta

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from config.admin_base import badge, breakable

from .admin_sources import RuleActivity, sources
from .budgets import budget_status
from .descriptions import rule_lines_in_words

ACTIVITY_DAYS = 30


class RuleChangeList(ChangeList):
    """Reads the page's activity in one query instead of one per row."""

    def get_results(self, request):
        super().get_results(request)
        rules = list(self.result_list)
        since = timezone.now() - timedelta(days=ACTIVITY_DAYS)
        activity = sources.activity([rule.pk for rule in rules], since) if rules else {}
        for rule in rules:
            rule.activity_30d = activity.get(rule.pk, RuleActivity())


class RuleColumns:
    """Mixed into the rule admin (before its base class)."""

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("rewards")

    @admin.display(description="Rule", ordering="code")
    def rule(self, obj):
        return format_html(
            '{} <span class="small">v{}</span><div class="small">{}</div>', breakable(obj.code), obj.version, obj.name
        )

    @admin.display(description="Event type", ordering="event_type")
    def type(self, obj):
        return breakable(obj.event_type)

    @admin.display(description="Pays")
    def pays(self, obj):
        lines = rule_lines_in_words(obj) or ["nothing"]
        return format_html_join("", '<div class="pays-line">{}</div>', ((breakable(line),) for line in lines))

    @admin.display(description="Active", ordering="is_active")
    def active(self, obj):
        return badge("active", "active") if obj.is_active else badge("inactive", "off")

    @admin.display(description=f"Fired {ACTIVITY_DAYS}d")
    def fired_30d(self, obj):
        return getattr(obj, "activity_30d", RuleActivity()).fired

    @admin.display(description=f"Paid {ACTIVITY_DAYS}d")
    def points_30d(self, obj):
        return getattr(obj, "activity_30d", RuleActivity()).points

    @admin.display(description="Budget")
    def budget_left(self, obj):
        return budget_status_text(obj)


def budget_status_text(rule) -> str:
    """The budget used and left this period (SPEC §14), as the rules list and a rule's page show it.

    A query for budgeted rules only: a rule without a budget answers without reading."""
    status = budget_status(rule=rule) if rule.pk is not None else None
    if status is None:
        return "—"
    return f"{status.used} used, {status.left} left of {status.budget} ({status.period_key})"
