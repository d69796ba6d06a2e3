"""Reads of rules shared by the engine's callers, the admin and the import/export services."""

from django.db.models import Prefetch, QuerySet

from .models import RewardLine, Rule, RuleVersion


def _lines_prefetch() -> Prefetch:
    return Prefetch("rewards", queryset=RewardLine.objects.order_by("position", "id"))


def rules_for_event_type(event_type: str) -> list[Rule]:
    """The active rules of one event type, lines prefetched, in engine order (priority, then code).

    Two queries (rules by the (event_type, is_active, priority) index, then their lines), however many
    rules other event types have. Validity windows are left to the engine, which explains its skips.
    """
    return list(
        Rule.objects.filter(event_type=event_type, is_active=True)
        .order_by("priority", "code")
        .prefetch_related(_lines_prefetch())
    )


def rules_with_lines(*, codes=None) -> QuerySet[Rule]:
    """Rules (all of them, or those with the given codes) with their lines, in export order."""
    queryset = Rule.objects.order_by("event_type", "priority", "code").prefetch_related(_lines_prefetch())
    if codes is not None:
        queryset = queryset.filter(code__in=list(codes))
    return queryset


def rule_version_get(*, rule_id: int, version: int) -> RuleVersion | None:
    """The stored snapshot of a rule at one version (what a RewardAction's rule_version points to)."""
    return RuleVersion.objects.select_related("rule", "created_by").filter(rule_id=rule_id, version=version).first()
