"""Backtest (SPEC §15): replay stored events against other rules, writing nothing, and compare.

Events of the period are replayed in the order they were received, through the same engine as
ingestion, against in-memory copies of what the engine reads: user profiles (rebuilt from the
profile events received before ``since``, then updated by each replayed event as ingestion would),
the counters of caps, periodic caps and budgets (seeded from production's actions before ``since``).
So the current rules over a period reproduce production's actions, event for event, wherever
production's events did not race each other. The report compares with what production stored for
the same events.

Refunds (SPEC §12) count back: each reversal event gives its share back to the counters before its own
rules run, as at ingest (``connect.backtest_counters``), so a reward a refund made available again is
paid again in the replay. What a refund took back is not compared: the comparison leaves reversal
actions out and counts each original action at its gross amount (before a refund reduced it in place),
and the report says how many reversal actions it left out. A backtest of unchanged rules still equals
production when refunds exist.
"""

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db.models import BooleanField, Count, ExpressionWrapper, Q, Sum
from django.db.models.functions import Coalesce

from rules import engine
from rules.budgets import period_key, period_start
from rules.expressions import ProfileView
from rules.models import RewardLine, Rule
from rules.selectors import rules_with_lines
from rules.services import rule_from_dict

from .backtest_counters import Counters, Refunds
from .models import EconomicEvent, RewardAction
from .profiles import MAX_UPLINE_DEPTH
from .reversals import gross_amount_expression

TOP_TARGETS = 10
DIFFERENCE_EXAMPLES = 20
CHUNK = 5000


class BacktestInvalid(ValueError):
    """The rules or the period cannot be backtested; ``errors`` says why."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("; ".join(errors))


@dataclass
class _Replayed:
    """The rules a backtest runs: the given ones, plus (unless ``only``) production's other active rules."""

    rules_by_type: dict[str, list[Rule]]
    lines: dict[int, list[RewardLine]]  # rule id -> lines
    codes: set[str]


def _rules_prepare(payload, *, only: bool) -> _Replayed:
    if not isinstance(payload, dict) or not isinstance(payload.get("rules"), list):
        raise BacktestInvalid(['The rules must be a JSON object {"rules": [ ... ]}.'])
    errors: list[str] = []
    given: list[tuple[Rule, list[RewardLine]]] = []
    for index, entry in enumerate(payload["rules"], start=1):
        try:
            given.append(rule_from_dict(data=entry))
        except Exception as exc:  # ValidationError: every problem of that rule
            messages = getattr(exc, "messages", [str(exc)])
            errors += [f"rule {index}: {message}" for message in messages]
    codes = [rule.code for rule, _ in given]
    if len(set(codes)) != len(codes):
        errors.append("a rule code appears twice.")
    if errors:
        raise BacktestInvalid(errors)

    production = {rule.code: rule for rule in rules_with_lines()}
    replayed: list[Rule] = []
    lines: dict[int, list[RewardLine]] = {}
    synthetic = 0
    for rule, rule_lines in given:
        # Ids of production's rule and lines with the same code and position, so the counters seeded
        # from production count for them; a rule or line production lacks gets an id of its own.
        current = production.get(rule.code)
        current_lines = {line.position: line for line in current.rewards.all()} if current else {}
        if current is not None:
            rule.pk, rule.version = current.pk, current.version
        else:
            synthetic -= 1
            rule.pk, rule.version = synthetic, 0
        for line in rule_lines:
            match = current_lines.get(line.position)
            if match is not None:
                line.pk = match.pk
            else:
                synthetic -= 1
                line.pk = synthetic
        replayed.append(rule)
        lines[rule.pk] = rule_lines
    if not only:
        for code, rule in production.items():
            if code not in set(codes) and rule.is_active:
                replayed.append(rule)
                lines[rule.pk] = list(rule.rewards.all())
    by_type: dict[str, list[Rule]] = defaultdict(list)
    for rule in replayed:
        by_type[rule.event_type].append(rule)
    return _Replayed(rules_by_type=dict(by_type), lines=lines, codes={rule.code for rule in replayed})


class _Profiles:
    """In-memory profiles: user -> [sponsor, is_vip, is_pro], updated as ``profiles.profile_apply``."""

    def __init__(self):
        self.users: dict[str, list] = {}

    def apply(self, event_type: str, actor: str, subject: str | None, context) -> None:
        if event_type in settings.PROFILE_SPONSOR_EVENT_TYPES and subject and subject != actor:
            level = context.get("level") if isinstance(context, dict) else None
            if (level is None or (not isinstance(level, bool) and level == 1)) and not self._closes_cycle(
                actor, subject
            ):
                entry = self.users.setdefault(actor, [None, False, False])
                if entry[0] is None:
                    entry[0] = subject
        if event_type in settings.PROFILE_VIP_EVENT_TYPES:
            self.users.setdefault(actor, [None, False, False])[1] = True
        if event_type in settings.PROFILE_PRO_EVENT_TYPES:
            self.users.setdefault(actor, [None, False, False])[2] = True

    def _closes_cycle(self, user_id: str, sponsor_id: str) -> bool:
        ancestor = sponsor_id
        for _ in range(MAX_UPLINE_DEPTH):
            if ancestor == user_id:
                return True
            ancestor = self.upline(ancestor, 1)
            if ancestor is None:
                return False
        return False

    def profile(self, user_id: str) -> ProfileView | None:
        entry = self.users.get(user_id) if user_id else None
        if entry is None:
            return None
        sponsor, is_vip, is_pro = entry
        tier = "pro" if is_pro else "vip" if is_vip else "basic"
        return ProfileView(user_id=user_id, tier=tier, is_vip=is_vip, is_pro=is_pro, sponsor=sponsor)

    def upline(self, user_id: str, n: int) -> str | None:
        current, seen = user_id, {user_id}
        for _ in range(min(n, MAX_UPLINE_DEPTH)):
            entry = self.users.get(current)
            if entry is None or not entry[0] or entry[0] in seen:
                return None
            current = entry[0]
            seen.add(current)
        return current


_PROFILE_FIELDS = ("event_type", "actor_user_id", "primary_subject_user_id", "context")


def _profile_types() -> set[str]:
    return {
        *settings.PROFILE_SPONSOR_EVENT_TYPES,
        *settings.PROFILE_VIP_EVENT_TYPES,
        *settings.PROFILE_PRO_EVENT_TYPES,
    }


def _profiles_seed(since: datetime) -> _Profiles:
    profiles = _Profiles()
    rows = (
        EconomicEvent.objects.filter(event_type__in=_profile_types(), received_at__lt=since)
        .order_by("received_at", "id")
        .values_list(*_PROFILE_FIELDS)
    )
    for event_type, actor, subject, context in rows.iterator(chunk_size=CHUNK):
        profiles.apply(event_type, actor, subject, context)
    return profiles


def _counters_seed(replayed: _Replayed, since: datetime) -> Counters:
    """Production's counts before ``since`` of the caps and budgets the replayed rules have."""
    counters = Counters()
    before = RewardAction.objects.filter(event__received_at__lt=since, reverses__isnull=True)
    moment = Coalesce("event__occurred_at", "event__received_at")
    life_lines, period_lines, budget_rules = [], [], []
    for rules in replayed.rules_by_type.values():
        for rule in rules:
            if rule.budget is not None and rule.pk > 0:
                budget_rules.append(rule)
            for line in replayed.lines[rule.pk]:
                if line.pk > 0 and line.max_per_target is not None:
                    life_lines.append(line.pk)
                if line.pk > 0 and line.max_per_target_per_period is not None and line.period:
                    period_lines.append(line)
    if life_lines:
        rows = before.filter(reward_line_id__in=life_lines).values_list("reward_line_id", "target_user_id")
        for line_id, target, count in rows.annotate(n=Count("id")):
            counters.granted[(line_id, target)] = count
    for line in period_lines:
        start = period_start(line.period, since)
        rows = (
            before.annotate(moment=moment)
            .filter(reward_line_id=line.pk, moment__gte=start)
            .values_list("target_user_id")
            .annotate(n=Count("id"))
        )
        key = period_key(line.period, since)
        for target, count in rows:
            counters.periods[(line.pk, target, key)] = count
    for rule in budget_rules:
        spent = before.filter(rule_id=rule.pk, reward_type=RewardLine.RewardType.POINTS)
        if rule.budget_period:
            spent = spent.annotate(moment=moment).filter(moment__gte=period_start(rule.budget_period, since))
        used = spent.annotate(gross=gross_amount_expression()).aggregate(total=Sum("gross"))["total"] or 0
        counters.budgets[(rule.pk, period_key(rule.budget_period, since))] = used
    return counters


class _Production:
    """Production's actions of the replayed events, read in one pass in the events' order.

    Reversal actions are left out and each action counts at its gross amount
    (``connect.reversals.gross_amount``). The query orders the actions as the events are replayed
    (received_at, then event id) and ``of`` walks both in step, so the actions are read once and only
    a chunk of them is in memory. Reversal actions are dropped here rather than by the query: with
    ``reverses_id IS NULL`` in it, a planner on stale statistics scanned that index once per event."""

    def __init__(self, since: datetime, until: datetime, types: set[str]):
        gross = gross_amount_expression()
        reversal = ExpressionWrapper(Q(reverses__isnull=False), output_field=BooleanField())
        rows = (
            _period_actions(since, until)
            .filter(event__event_type__in=types)
            .annotate(gross=gross, reversal=reversal)
            .order_by("event__received_at", "event_id")
            .values_list(
                "event__received_at", "event_id", "reversal", "rule_code", "target_user_id", "reward_type", "gross"
            )
        )
        self.rows = rows.iterator(chunk_size=CHUNK)
        self.head = next(self.rows, None)

    def of(self, received_at: datetime, event_id) -> list[tuple]:
        """The event's actions as [(rule, target, type, amount)]; events must come in replay order."""
        stored = []
        head = self.head
        while head is not None and (head[0] < received_at or (head[0] == received_at and head[1] <= event_id)):
            if head[1] == event_id and not head[2]:
                stored.append(head[3:])
            head = next(self.rows, None)
        self.head = head
        return stored


def _period_actions(since: datetime, until: datetime):
    return RewardAction.objects.filter(event__received_at__gte=since, event__received_at__lt=until)


def _tally() -> dict:
    return {"events_matched": 0, "actions": 0, "points": 0, "by_reward_type": Counter()}


def backtest_run(
    *,
    payload: dict,
    since: datetime,
    until: datetime,
    only: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Replay the events received in [since, until) against ``payload`` (a rules file), writing nothing.

    ``payload``'s rules replace production's rules of the same code; production's other active
    rules run too, unless ``only``. ``progress(done, total)`` is called now and then. Returns the
    report (JSON-ready). Raises BacktestInvalid for invalid rules or an empty period.
    """
    if since >= until:
        raise BacktestInvalid(["since must be before until."])
    started = time.monotonic()
    replayed = _rules_prepare(payload, only=only)
    profiles = _profiles_seed(since)
    counters = _counters_seed(replayed, since)
    refunds = Refunds(counters, since=since, until=until)

    types = set(replayed.rules_by_type) | _profile_types()
    # A reversal event is replayed whatever its type: what it counts back changes later events.
    events = EconomicEvent.objects.filter(
        Q(event_type__in=types) | Q(reverses__isnull=False), received_at__gte=since, received_at__lt=until
    )
    total = events.count()
    production = _Production(since, until, types)
    if progress:
        progress(0, total)

    ours, theirs = defaultdict(_tally), defaultdict(_tally)
    by_type: dict[str, Counter] = {"backtest": Counter(), "production": Counter()}
    targets: Counter = Counter()
    caps_hit: Counter = Counter()
    budgets_hit: Counter = Counter()
    differing, examples, matched_events, failed_events, done = 0, [], 0, 0, 0
    lines = replayed.lines

    def lines_of(rule: Rule) -> list[RewardLine]:
        return lines[rule.pk]

    profile_types = _profile_types()

    rows = events.order_by("received_at", "id").values_list(
        "id", "event_type", "actor_user_id", "primary_subject_user_id", "context", "occurred_at", "received_at",
        "reverses_id", "reversal_fraction",
    )  # fmt: skip
    for row in rows.iterator(chunk_size=CHUNK):
        event_id, event_type, actor, subject, context, occurred_at, received_at, reverses_id, fraction = row
        done += 1
        if event_type in profile_types:
            profiles.apply(event_type, actor, subject, context)
        # As at ingest: the refund first, then the reversal event's own rules (with what it counted back).
        undo_refund = refunds.replay(reverses_id, fraction) if reverses_id is not None else None
        rules = replayed.rules_by_type.get(event_type)
        planned: list = []
        if rules:
            try:
                plan = engine.plan(
                    event=engine.EventInput(event_type, actor, subject, context, occurred_at, received_at),
                    rules=rules,
                    profile=profiles.profile,
                    upline=profiles.upline,
                    granted_count=counters.granted_count,
                    period_count=counters.period_count,
                    budget_used=counters.budget_used,
                    lines_of=lines_of,
                )
            except engine.RuleEvaluationFailed:
                failed_events += 1
                if undo_refund is not None:
                    undo_refund()  # a failed event has no actions: its refund is not applied either
            else:
                counters.record(plan.actions)
                refunds.remember(event_id, plan.actions)
                planned = [(a.rule_code, a.target_user_id, a.reward_type, a.amount) for a in plan.actions]
                for rule_trace in plan.trace:
                    if rule_trace.code != "matched":
                        continue
                    ours[rule_trace.rule_code]["events_matched"] += 1
                    for line in rule_trace.lines:
                        if line.code in ("cap_reached", "period_cap_reached"):
                            caps_hit[(rule_trace.rule_code, line.position, line.code)] += 1
                        elif line.code == "budget_exhausted" or line.code.startswith("budget_partial:"):
                            budgets_hit[rule_trace.rule_code] += 1
                if any(t.code == "matched" for t in plan.trace):
                    matched_events += 1
        for rule_code, target, reward_type, amount in planned:
            tally = ours[rule_code]
            tally["actions"] += 1
            tally["by_reward_type"][reward_type] += amount
            by_type["backtest"][reward_type] += amount
            if reward_type == RewardLine.RewardType.POINTS:
                tally["points"] += amount
                targets[target] += amount
        stored = production.of(received_at, event_id)
        for rule_code, _target, reward_type, amount in stored:
            tally = theirs[rule_code]
            tally["actions"] += 1
            tally["by_reward_type"][reward_type] += amount
            by_type["production"][reward_type] += amount
            if reward_type == RewardLine.RewardType.POINTS:
                tally["points"] += amount
        if sorted(planned) != sorted(stored):
            differing += 1
            if len(examples) < DIFFERENCE_EXAMPLES:
                examples.append(
                    {
                        "event_id": str(event_id),
                        "event_type": event_type,
                        "backtest": [_action_json(a) for a in sorted(planned)],
                        "production": [_action_json(a) for a in sorted(stored)],
                    }
                )
        if progress and done % 1000 == 0:
            progress(done, total)
    if progress:
        progress(done, total)

    elapsed = time.monotonic() - started
    rule_codes = sorted(set(ours) | set(theirs) | replayed.codes)
    return {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "events": done,
        "events_matched": matched_events,
        "events_failed": failed_events,
        "actions": {
            "backtest": sum(t["actions"] for t in ours.values()),
            "production": sum(t["actions"] for t in theirs.values()),
        },  # fmt: skip
        "by_reward_type": {
            reward_type: {
                "backtest": by_type["backtest"][reward_type],
                "production": by_type["production"][reward_type],
            }
            for reward_type in sorted(set(by_type["backtest"]) | set(by_type["production"]))
        },
        "rules": [_rule_row(code, ours.get(code) or _tally(), theirs.get(code) or _tally()) for code in rule_codes],
        "top_targets": [{"user_id": user, "points": points} for user, points in targets.most_common(TOP_TARGETS)],
        "caps_hit": [
            {"rule": rule, "line": position, "reason": reason, "times": times}
            for (rule, position, reason), times in sorted(caps_hit.items())
        ],
        "budgets": _budgets_report(replayed, counters, budgets_hit),
        "events_differing": differing,
        "differences": examples,
        "reversals_replayed": refunds.replays,
        "reversal_actions_left_out": _period_actions(since, until).filter(reverses__isnull=False).count(),
        "seconds": round(elapsed, 3),
        "events_per_second": round(done / elapsed, 1) if elapsed > 0 else None,
    }


def _action_json(action: tuple) -> dict:
    rule, target, reward_type, amount = action
    return {"rule": rule, "target_user_id": target, "reward_type": reward_type, "amount": amount}


def _rule_row(code: str, ours: dict, theirs: dict) -> dict:
    def plain(tally: dict) -> dict:
        return {
            "actions": tally["actions"],
            "points": tally["points"],
            "by_reward_type": dict(sorted(tally["by_reward_type"].items())),
        }

    return {
        "rule": code,
        "events_matched": ours["events_matched"],
        **plain(ours),
        "production": plain(theirs),
        "difference": {"actions": ours["actions"] - theirs["actions"], "points": ours["points"] - theirs["points"]},
    }


def _budgets_report(replayed: _Replayed, counters: Counters, hit: Counter) -> list[dict]:
    report = []
    for rules in replayed.rules_by_type.values():
        for rule in rules:
            if rule.budget is None:
                continue
            periods = {key: used for (rule_id, key), used in counters.budgets.items() if rule_id == rule.pk}
            report.append(
                {
                    "rule": rule.code,
                    "budget": rule.budget,
                    "budget_period": rule.budget_period or None,
                    "used": dict(sorted(periods.items())),
                    "lines_limited": hit[rule.code],
                }
            )
    return sorted(report, key=lambda row: row["rule"])


def report_lines(report: dict) -> list[str]:
    """The report as a plain-text table (the command's default output, and the admin page's)."""
    out = [
        f"Backtest {report['since']} .. {report['until']}: {report['events']} events, "
        f"{report['events_matched']} matched, {report['events_failed']} failed, "
        f"{report['events_differing']} differ from production ({report['events_per_second']} events/s)",
        "",
        f"{'rule':<40} {'matched':>8} {'actions':>8} {'prod':>8} {'Δ':>6} {'points':>12} {'prod':>12} {'Δ':>10}",
    ]
    for row in report["rules"]:
        prod, diff = row["production"], row["difference"]
        out.append(
            f"{row['rule']:<40} {row['events_matched']:>8} {row['actions']:>8} {prod['actions']:>8} "
            f"{diff['actions']:>6} {row['points']:>12} {prod['points']:>12} {diff['points']:>10}"
        )
    out += ["", "By reward type (amounts): backtest / production"]
    out += [f"  {name:<14} {v['backtest']:>12} / {v['production']}" for name, v in report["by_reward_type"].items()]
    out += ["", "Top targets (points)"]
    out += [f"  {row['user_id']:<40} {row['points']:>12}" for row in report["top_targets"]]
    left_out, refunds = report.get("reversal_actions_left_out"), report.get("reversals_replayed")
    if left_out or refunds:
        out += ["", f"Refunds: {refunds or 0} reversal event(s) counted back in the replay; {left_out or 0} "
                    "reversal action(s) left out of the comparison, refunded actions compared at their "
                    "amount before the refund"]  # fmt: skip
    if report["caps_hit"]:
        out += ["", "Caps hit"]
        out += [f"  {c['rule']} line {c['line']}: {c['reason']} × {c['times']}" for c in report["caps_hit"]]
    if report["budgets"]:
        out += ["", "Budgets"]
        for b in report["budgets"]:
            used = ", ".join(f"{key}: {value}" for key, value in b["used"].items()) or "nothing used"
            out.append(f"  {b['rule']} ({b['budget']} per {b['budget_period'] or 'life'}): {used}; "
                       f"{b['lines_limited']} line(s) limited")  # fmt: skip
    return out
