"""A backtest's counters (SPEC §14, §15), and the refunds it replays on them (SPEC §12).

The counters are in-memory copies of what the engine reads at ingest: once-only grants, periodic caps
and budgets. ``connect.backtest`` seeds them from production's actions before ``since`` and counts
each replayed action in them.

Production counts a reversal's share of an action back into its rule's budget, and the action out of
its line's caps once nothing of it is left (``connect.counters``), so a later event may be paid again.
A backtest does the same to its in-memory counters when the reversal event comes up in the replay,
before the reversal event's own rules run (and undoes it if they fail, as production rolls it back):

- an original replayed in the period: the share of each action the replay gave it (what the replayed
  rules would have paid, and counted);
- an original received before ``since``: the share of each action production stored for it (the
  actions the counters were seeded with), after what reversals received before ``since`` took back.

The counters seeded from production's actions before ``since`` are also counted back by the reversals
received before ``since``. Shares are production's: ``floor(gross × fraction)`` for each reversal in
turn, never more in total than the gross. Of an original before ``since``, an action a staff member
cancelled is never counted back (a reversal skips cancelled actions); the replay does not know when
that happened, so it treats it as cancelled before any reversal. Of an original in the period, the
replay counts back what it paid itself, which no staff member could cancel.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.db.models import Q

from .models import EconomicEvent, RewardAction
from .reversals import CANCELLED_BY_REVERSAL, gross_amount_expression, reversed_share


@dataclass
class CountedAction:
    """An action as the counters counted it, and what reversals have taken back of it so far."""

    rule_id: int
    line_id: int | None
    target: str
    budget_key: str
    cap_period_key: str
    gross: int
    reversed: int = 0


@dataclass
class Counters:
    """The counters a backtest plans with: once-only grants, periodic caps and budgets."""

    granted: Counter = field(default_factory=Counter)  # (line id, target)
    periods: Counter = field(default_factory=Counter)  # (line id, target, period key)
    budgets: Counter = field(default_factory=Counter)  # (rule id, period key)

    def granted_count(self, line_id, target):
        return self.granted[(line_id, target)]

    def period_count(self, line_id, target, key):
        return self.periods[(line_id, target, key)]

    def budget_used(self, rule_id, key):
        return self.budgets[(rule_id, key)]

    def record(self, actions) -> None:
        for action in actions:
            if action.max_per_target is not None:
                self.granted[(action.line_id, action.target_user_id)] += 1
            if action.cap_period_key:
                self.periods[(action.line_id, action.target_user_id, action.cap_period_key)] += 1
            if action.budget_key:
                self.budgets[(action.rule_id, action.budget_key)] += action.budget_charge

    def count_back(self, action: CountedAction, share: int, whole: bool) -> list[tuple[Counter, tuple, int]]:
        """What ``connect.counters.reward_action_counters_refund`` does, on these counters: ``share``
        back into the budget, and the action out of its caps when ``whole``. Never below zero, and a
        counter the replay never had is left alone. Returns what changed, to undo it."""
        changed = []
        key = (action.rule_id, action.budget_key)
        if action.budget_key and share > 0 and self.budgets[key] > 0:
            taken = min(share, self.budgets[key])
            self.budgets[key] -= taken
            changed.append((self.budgets, key, taken))
        if not whole or action.line_id is None:
            return changed
        keys = [(self.granted, (action.line_id, action.target))]
        if action.cap_period_key:
            keys.append((self.periods, (action.line_id, action.target, action.cap_period_key)))
        for counter, key in keys:
            if counter[key] > 0:
                counter[key] -= 1
                changed.append((counter, key, 1))
        return changed


class Refunds:
    """The actions reversals may count back, and the replay of each reversal event on ``counters``."""

    def __init__(self, counters: Counters, *, since: datetime, until: datetime):
        self.counters = counters
        self.replayed: dict = {}  # original event id -> its CountedActions in the replay
        self.earlier = self._earlier_originals(since, until)
        self.replays = 0
        # The seed is production's counting before ``since``: take out what was counted back then.
        fractions = (
            EconomicEvent.objects.filter(reverses__isnull=False, received_at__lt=since)
            .order_by("received_at", "id")
            .values_list("reverses_id", "reversal_fraction")
        )
        for original_id, fraction in fractions.iterator(chunk_size=5000):
            self._take_back(self.earlier.get(original_id, ()), fraction)

    @staticmethod
    def _earlier_originals(since: datetime, until: datetime) -> dict:
        """Production's actions of each event received before ``since`` that a reversal received
        before ``until`` reverses, in the order a reversal goes through them."""
        reversed_ids = EconomicEvent.objects.filter(reverses__isnull=False, received_at__lt=until).values("reverses_id")
        rows = (
            RewardAction.objects.filter(event__received_at__lt=since, event_id__in=reversed_ids, reverses__isnull=True)
            .exclude(Q(status=RewardAction.Status.CANCELLED) & ~Q(cancel_reason__startswith=CANCELLED_BY_REVERSAL))
            .annotate(gross=gross_amount_expression())
            .order_by("event_id", "pk")
            .values_list(
                "event_id",
                "rule_id",
                "reward_line_id",
                "target_user_id",
                "budget_period_key",
                "cap_period_key",
                "gross",
            )
        )
        earlier: dict = defaultdict(list)
        for event_id, rule_id, line_id, target, budget_key, cap_key, gross in rows.iterator(chunk_size=5000):
            earlier[event_id].append(CountedAction(rule_id, line_id, target, budget_key, cap_key, gross))
        return dict(earlier)

    def remember(self, event_id, planned: Iterable) -> None:
        """Keep the replayed event's actions that counted in some counter (a reversal may come later)."""
        counted = [
            CountedAction(a.rule_id, a.line_id, a.target_user_id, a.budget_key, a.cap_period_key, a.amount)
            for a in planned
            if a.max_per_target is not None or a.cap_period_key or a.budget_key
        ]
        if counted:
            self.replayed[event_id] = counted

    def replay(self, original_id, fraction: Decimal | None) -> Callable[[], None]:
        """Count back what a reversal of ``fraction`` (None: all) of ``original_id`` takes back; returns
        the undo, for a reversal event whose own rules then fail (production rolls the refund back)."""
        self.replays += 1
        actions = self.replayed.get(original_id) or self.earlier.get(original_id, ())
        undo_take_back = self._take_back(actions, fraction)

        def undo() -> None:
            self.replays -= 1
            undo_take_back()

        return undo

    def _take_back(self, actions: Iterable[CountedAction], fraction: Decimal | None) -> Callable[[], None]:
        fraction = Decimal(1) if fraction is None else fraction
        taken: list[tuple[CountedAction, int]] = []
        changed: list[tuple[Counter, tuple, int]] = []
        for action in actions:
            share = min(reversed_share(action.gross, fraction), action.gross - action.reversed)
            if share <= 0:
                continue
            action.reversed += share
            taken.append((action, share))
            changed += self.counters.count_back(action, share, whole=action.reversed == action.gross)

        def undo() -> None:
            for action, share in taken:
                action.reversed -= share
            for counter, key, amount in changed:
                counter[key] += amount

        return undo
