"""Reads of rules shared by the engine's callers, the admin and the import/export services."""

import time

from django.conf import settings
from django.db import transaction
from django.db.models import Prefetch, QuerySet
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from .models import RewardLine, Rule, RuleVersion

# event_type -> (expires_at on the monotonic clock, rules). Shared by the threads of a process: each
# get and set of a key (and clear) is atomic under the GIL, so a plain dict needs no lock; the worst
# race is two threads loading the same type at once.
_rules_cache: dict[str, tuple[float, list[Rule]]] = {}
# Bumped by every clear, so a load that raced with an edit is not stored (it may predate the edit).
_rules_cache_generation = 0


def _lines_prefetch() -> Prefetch:
    return Prefetch("rewards", queryset=RewardLine.objects.order_by("position", "id"))


def rules_for_event_type(event_type: str) -> list[Rule]:
    """The active rules of one event type, lines prefetched, in engine order (priority, then code).

    Cached per process for RULES_CACHE_SECONDS (0 or less: no cache): a hit runs no query; a miss
    runs two (rules by the (event_type, is_active, priority) index, then their lines), however many
    rules other event types have. Saving or deleting a Rule or RewardLine clears the cache of the
    process that does it; other processes see the edit once their entry expires. Returns a new list
    each call; the rules in it are shared and must not be modified. Validity windows are left to the
    engine, which explains its skips.
    """
    ttl = settings.RULES_CACHE_SECONDS
    if ttl <= 0:
        return _rules_load(event_type)
    now = time.monotonic()
    cached = _rules_cache.get(event_type)
    if cached is not None and now < cached[0]:
        return list(cached[1])
    generation = _rules_cache_generation
    rules = _rules_load(event_type)
    if generation == _rules_cache_generation:
        _rules_cache[event_type] = (now + ttl, rules)
    return list(rules)


def _rules_load(event_type: str) -> list[Rule]:
    return list(
        Rule.objects.filter(event_type=event_type, is_active=True)
        .order_by("priority", "code")
        .prefetch_related(_lines_prefetch())
    )


def rules_cache_clear() -> None:
    """Forget every cached rule list of this process."""
    global _rules_cache_generation
    _rules_cache_generation += 1
    _rules_cache.clear()


@receiver(post_save, sender=Rule, dispatch_uid="rules_cache_clear_rule_saved")
@receiver(post_delete, sender=Rule, dispatch_uid="rules_cache_clear_rule_deleted")
@receiver(post_save, sender=RewardLine, dispatch_uid="rules_cache_clear_line_saved")
@receiver(post_delete, sender=RewardLine, dispatch_uid="rules_cache_clear_line_deleted")
def _rules_cache_clear_on_edit(**kwargs) -> None:
    # Clear now (this transaction's own reads) and again on commit: another thread may have cached
    # the still-committed old rules while the edit's transaction was open.
    rules_cache_clear()
    transaction.on_commit(rules_cache_clear, using=kwargs.get("using"))


def rules_with_lines(*, codes=None) -> QuerySet[Rule]:
    """Rules (all of them, or those with the given codes) with their lines, in export order."""
    queryset = Rule.objects.order_by("event_type", "priority", "code").prefetch_related(_lines_prefetch())
    if codes is not None:
        queryset = queryset.filter(code__in=list(codes))
    return queryset


def rule_version_get(*, rule_id: int, version: int) -> RuleVersion | None:
    """The stored snapshot of a rule at one version (what a RewardAction's rule_version points to)."""
    return RuleVersion.objects.select_related("rule", "created_by").filter(rule_id=rule_id, version=version).first()
