"""Budgets and periodic caps (SPEC §14): calendar periods, the counter rows behind them, refunds.

A counter row is locked (``SELECT ... FOR UPDATE``) the first time an ingest asks for it and stays
locked until that ingest commits, so concurrent events see each other's spending. The engine asks
for them in one fixed order — rules by (priority, code), and within a rule its budget row before its
lines, each line's ``max_per_target`` row (``connect.RewardGrant``) before its period row — the same
order for every event of a type, so two ingests never wait on each other in a cycle.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from .models import BudgetCounter, Period, PeriodGrant, RewardLine, Rule

LIFETIME_KEY = "all"


def program_zone() -> ZoneInfo:
    return ZoneInfo(settings.PROGRAM_TIME_ZONE)


def period_start(period: str, moment: datetime) -> datetime:
    """The start (aware, in PROGRAM_TIME_ZONE) of the calendar ``period`` holding ``moment``."""
    local = moment.astimezone(program_zone())
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == Period.DAY:
        start = day
    elif period == Period.WEEK:
        start = day - timedelta(days=local.weekday())
    elif period == Period.MONTH:
        start = day.replace(day=1)
    else:
        raise ValueError(f"Unknown period {period!r}.")
    # Re-attach the zone so a DST change between the moment and the start gives the start's offset.
    return start.replace(tzinfo=None).replace(tzinfo=program_zone())


def period_end(period: str, moment: datetime) -> datetime:
    start = period_start(period, moment)
    naive = start.replace(tzinfo=None)
    if period == Period.DAY:
        naive += timedelta(days=1)
    elif period == Period.WEEK:
        naive += timedelta(days=7)
    else:
        naive = (naive.replace(day=28) + timedelta(days=4)).replace(day=1)
    return naive.replace(tzinfo=program_zone())


def period_key(period: str | None, moment: datetime) -> str:
    """The counter key of the calendar period holding ``moment``: ``day:2026-12-07``,
    ``week:2026-12-07`` (its Monday), ``month:2026-12``; ``all`` when there is no period."""
    if not period:
        return LIFETIME_KEY
    start = period_start(period, moment)
    if period == Period.MONTH:
        return f"month:{start:%Y-%m}"
    return f"{period}:{start:%Y-%m-%d}"


def rules_need_counters(rules: Iterable[Rule]) -> bool:
    """Whether evaluating these rules may lock counter rows (a budget, a periodic or a life cap),
    which only the transactional ingest path can hold until commit."""
    return any(
        rule.budget is not None
        or any(
            line.max_per_target is not None or line.max_per_target_per_period is not None for line in rule.rewards.all()
        )
        for rule in rules
    )


class CounterLocks:
    """The budget and period counters of one ingest, each row locked on first use until commit.

    Callables for ``engine.plan`` (``budget_used``, ``period_count``) and ``record`` to add what
    the plan spent. Needs the caller's transaction.
    """

    def __init__(self):
        self._budgets: dict[tuple[int, str], int] = {}
        self._periods: dict[tuple[int, str, str], int] = {}

    def budget_used(self, rule_id: int, key: str) -> int:
        if (rule_id, key) not in self._budgets:
            BudgetCounter.objects.get_or_create(rule_id=rule_id, period_key=key)
            row = BudgetCounter.objects.select_for_update().get(rule_id=rule_id, period_key=key)
            self._budgets[(rule_id, key)] = row.used
        return self._budgets[(rule_id, key)]

    def period_count(self, line_id: int, target_user_id: str, key: str) -> int:
        lookup = (line_id, target_user_id, key)
        if lookup not in self._periods:
            PeriodGrant.objects.get_or_create(reward_line_id=line_id, target_user_id=target_user_id, period_key=key)
            row = PeriodGrant.objects.select_for_update().get(
                reward_line_id=line_id, target_user_id=target_user_id, period_key=key
            )
            self._periods[lookup] = row.count
        return self._periods[lookup]

    def record(self, actions: Sequence) -> None:
        """Count the planned actions (``engine.PlannedAction``) against the rows locked for them."""
        spent: dict[tuple[int, str], int] = {}
        for action in actions:
            if action.budget_key:
                spent[(action.rule_id, action.budget_key)] = (
                    spent.get((action.rule_id, action.budget_key), 0) + action.budget_charge
                )
            if action.cap_period_key:
                PeriodGrant.objects.filter(
                    reward_line_id=action.line_id,
                    target_user_id=action.target_user_id,
                    period_key=action.cap_period_key,
                ).update(count=F("count") + 1)
        for (rule_id, key), amount in spent.items():
            if amount:
                BudgetCounter.objects.filter(rule_id=rule_id, period_key=key).update(used=F("used") + amount)


def budget_refund(*, rule_id: int, period_key: str, amount: int) -> None:
    """Give ``amount`` points back to a rule's budget for the period they were charged in (a
    reversal, SPEC §12). Never below zero. Runs in the caller's transaction if any."""
    if amount <= 0 or not period_key:
        return
    with transaction.atomic():
        row = BudgetCounter.objects.select_for_update().filter(rule_id=rule_id, period_key=period_key).first()
        if row is not None:
            row.used = max(0, row.used - amount)
            row.save(update_fields=["used"])


def cap_refund(*, reward_line_id: int, target_user_id: str, period_key: str) -> None:
    """Count one action of a line back for its target in the period it was counted in (a reversal
    that took back the whole action), so the target can earn it again that period."""
    if not period_key:
        return
    PeriodGrant.objects.filter(
        Q(count__gt=0), reward_line_id=reward_line_id, target_user_id=target_user_id, period_key=period_key
    ).update(count=F("count") - 1)


@dataclass(frozen=True)
class BudgetStatus:
    budget: int
    period_key: str
    used: int

    @property
    def left(self) -> int:
        return max(0, self.budget - self.used)


def budget_status(*, rule: Rule, moment: datetime | None = None) -> BudgetStatus | None:
    """What the rule's budget has paid and has left in the current period (None: no budget)."""
    if rule.budget is None:
        return None
    key = period_key(rule.budget_period, moment or timezone.now())
    used = BudgetCounter.objects.filter(rule=rule, period_key=key).values_list("used", flat=True).first() or 0
    return BudgetStatus(budget=rule.budget, period_key=key, used=used)


def budget_used_without_lock(rule_id: int, key: str) -> int:
    """What a budget counter holds, read without locking (the simulator: never waits on a writer)."""
    return BudgetCounter.objects.filter(rule_id=rule_id, period_key=key).values_list("used", flat=True).first() or 0


def period_count_without_lock(line_id: int, target_user_id: str, key: str) -> int:
    return (
        PeriodGrant.objects.filter(reward_line_id=line_id, target_user_id=target_user_id, period_key=key)
        .values_list("count", flat=True)
        .first()
        or 0
    )


def line_has_period_cap(line: RewardLine) -> bool:
    return line.max_per_target_per_period is not None and bool(line.period)
