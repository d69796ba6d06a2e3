"""Reads of rules shared by the engine's callers, the admin and the import/export services."""

import time

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Prefetch, QuerySet
from django.db.models.expressions import RawSQL
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from .models import RewardLine, Rule, RuleVersion

# event_type -> (expires_at on the monotonic clock, stamp, rules). Shared by the threads of a process:
# each get and set of a key (and clear) is atomic under the GIL, so a plain dict needs no lock; the
# worst race is two threads loading the same type at once.
_rules_cache: dict[str, tuple[float, str | None, list[Rule]]] = {}
# Bumped by every clear, so a load that raced with an edit is not stored (it may predate the edit).
_rules_cache_generation = 0


def _lines_prefetch() -> Prefetch:
    return Prefetch("rewards", queryset=RewardLine.objects.order_by("position", "id"))


def rules_for_event_type(event_type: str) -> list[Rule]:
    """The active rules of one event type, lines prefetched, in engine order (priority, then code).

    Cached per process for RULES_CACHE_SECONDS (0 or less: no cache): a hit runs no query. A miss
    runs two (rules by the (event_type, is_active, priority) index, then their lines), however many
    rules other event types have. An entry that expired is first checked against its stamp, a digest
    of every column of those rules and their lines that PostgreSQL computes in one query returning
    one row: unchanged, the same rules are kept for another period without being read again, so
    how many rules a type has costs nothing per event once they are loaded. Saving or deleting a
    Rule or RewardLine clears the cache of the process that does it; other processes see any edit,
    with or without signals, once their entry expires. Returns a new list each call; the rules in it
    are shared and must not be modified. Validity windows are left to the engine, which explains its
    skips.
    """
    ttl = settings.RULES_CACHE_SECONDS
    if ttl <= 0:
        return _rules_load(event_type)[1]
    now = time.monotonic()
    cached = _rules_cache.get(event_type)
    if cached is not None and now < cached[0]:
        return list(cached[2])
    generation = _rules_cache_generation
    if cached is not None and cached[1] is not None and _rules_stamp(event_type) == cached[1]:
        stamp, rules = cached[1], cached[2]
    else:
        stamp, rules = _rules_load(event_type)
    if generation == _rules_cache_generation:
        _rules_cache[event_type] = (now + ttl, stamp, rules)
    return list(rules)


# A digest of the active rules of one event type (every column of each, and of each of its lines),
# in the order of their ids: NULL when the type has none. The load takes it in the rules' own
# statement, so it is never newer than the rules it is stored with; the lines are read right after,
# and a line changed in between only makes the next check reload once more.
_STAMP_SQL = """
    SELECT md5(string_agg(stamp_rule::text || '|' || coalesce(stamp_lines.text, ''), '|' ORDER BY stamp_rule.id))
    FROM {rules} stamp_rule
    LEFT JOIN LATERAL (
        SELECT string_agg(stamp_line::text, '|' ORDER BY stamp_line.id) AS text
        FROM {lines} stamp_line WHERE stamp_line.rule_id = stamp_rule.id
    ) stamp_lines ON true
    WHERE stamp_rule.event_type = %s AND stamp_rule.is_active
"""


def _stamp_sql() -> str | None:
    if connection.vendor != "postgresql":
        return None  # elsewhere an expired entry is simply read again
    quote = connection.ops.quote_name
    return _STAMP_SQL.format(rules=quote(Rule._meta.db_table), lines=quote(RewardLine._meta.db_table))


def _rules_stamp(event_type: str) -> str | None:
    with connection.cursor() as cursor:
        cursor.execute(_stamp_sql(), [event_type])
        return cursor.fetchone()[0]


def _rules_load(event_type: str) -> tuple[str | None, list[Rule]]:
    """The stamp (None when there are no rules, or off PostgreSQL) and the rules, lines prefetched."""
    queryset = (
        Rule.objects.filter(event_type=event_type, is_active=True)
        .order_by("priority", "code")
        .prefetch_related(_lines_prefetch())
    )
    stamp_sql = _stamp_sql()
    if stamp_sql is not None:
        queryset = queryset.annotate(rules_stamp=RawSQL(f"({stamp_sql})", [event_type]))
    rules = list(queryset)
    return (getattr(rules[0], "rules_stamp", None) if rules else None), rules


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
