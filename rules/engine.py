"""The rule engine: one event plus the rules of its type → the reward actions to create, and why.

Pure: it writes nothing and reads the database only through the callables it is given (profiles,
the referral upline and how many actions a line already granted a target), so the same code serves
event ingestion and the admin simulator. Expressions compile once per source text (memoised in
``rules.expressions``); nothing is re-validated per event.
"""

import copy
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from config.api.fields import user_id_problem

from .budgets import period_key
from .expressions import (
    EvaluationContext,
    EvaluationError,
    ExpressionError,
    ProfileView,
    evaluate_amount,
    evaluate_condition,
    evaluate_target,
)
from .models import BudgetPolicy, RewardLine, Rule, lock_satisfied

# The ledger refuses amounts above this; a larger computed amount is an evaluation error of the rule.
MAX_AMOUNT = 10**12

FIRED = "fired"
SKIPPED = "skipped"


@dataclass(frozen=True)
class EventInput:
    event_type: str
    actor_user_id: str
    primary_subject_user_id: str | None
    context: dict
    occurred_at: datetime | None
    received_at: datetime


@dataclass(frozen=True)
class PlannedAction:
    rule_id: int
    rule_code: str
    rule_version: int
    line_id: int
    line_position: int
    target_user_id: str
    reward_type: str
    amount: int
    params: dict
    lock_condition: str
    locked: bool
    max_per_target: int | None
    # The budget counter this action was charged to ("" when its rule has no budget) and how much.
    budget_key: str = ""
    budget_charge: int = 0
    # The period counter of max_per_target_per_period this action counts in ("" when none).
    cap_period_key: str = ""


@dataclass(frozen=True)
class LineTrace:
    position: int
    target: str | None
    outcome: str  # "fired" | "skipped"
    reason: str  # for people
    amount: int | None
    locked: bool
    # SPEC §15 reason code: fired, no_target, amount_not_positive, cap_reached, period_cap_reached,
    # budget_exhausted, budget_partial:<paid>, locked:<condition>.
    code: str = ""
    reward_type: str = ""


@dataclass(frozen=True)
class RuleTrace:
    rule_code: str
    rule_version: int
    matched: bool
    reason: str  # for people
    lines: tuple[LineTrace, ...] = ()
    # SPEC §15 reason code: matched, condition_false, outside_window, stopped_by:<code>, error
    # (and, in the simulator, which also shows other rules: inactive, other_event_type).
    code: str = ""


@dataclass(frozen=True)
class Plan:
    actions: tuple[PlannedAction, ...]
    trace: tuple[RuleTrace, ...]


class RuleEvaluationFailed(Exception):
    """A rule could not be evaluated; the caller creates no action for the event at all.

    ``trace`` is the decision up to and including the failing rule (its code ``error``).
    """

    def __init__(self, rule_code: str, message: str, trace: tuple[RuleTrace, ...] = ()):
        self.rule_code = rule_code
        self.message = message
        self.trace = trace
        super().__init__(f"rule {rule_code!r}: {message}")


@dataclass
class Counters:
    """What the engine reads of the counters behind caps and budgets, and what this plan added.

    ``granted_count(line_id, target)``: actions a line made for a target, ever (max_per_target);
    ``period_count(line_id, target, period_key)``: in one calendar period; ``budget_used(rule_id,
    period_key)``: points a rule's budget paid in one period. The ingest passes callables that lock
    each counter row on first use; the engine calls them in a fixed order (see ``rules.budgets``).
    """

    granted_count: Callable[[int, str], int]
    period_count: Callable[[int, str, str], int]
    budget_used: Callable[[int, str], int]
    planned: Counter
    planned_periods: Counter
    budget_spent: Counter


def _zero(*args) -> int:
    return 0


def _window_refusal(rule: Rule, moment: datetime) -> str | None:
    if rule.valid_from is not None and moment < rule.valid_from:
        return f"not valid yet: event at {moment.isoformat()} is before valid_from {rule.valid_from.isoformat()}"
    if rule.valid_until is not None and moment >= rule.valid_until:
        return (
            f"no longer valid: event at {moment.isoformat()} is not before valid_until {rule.valid_until.isoformat()}"
        )
    return None


def _plan_line(
    *,
    rule: Rule,
    line: RewardLine,
    ctx: EvaluationContext,
    lock_profile: Callable[[str], ProfileView | None],
    counters: Counters,
    moment: datetime,
    budget_key: str,
) -> tuple[LineTrace, PlannedAction | None]:
    reward_type = line.reward_type
    target = evaluate_target(line.target, ctx)
    if target is None or target == "":
        return LineTrace(line.position, None, SKIPPED, "no target", None, False, "no_target", reward_type), None
    target = str(target)
    problem = user_id_problem(target)
    if problem:  # SPEC §5: a rule's target is a user id like any other, or the event fails
        raise EvaluationError(f"target of line {line.position} is not a valid user id: {problem}")

    if reward_type == RewardLine.RewardType.NFT:
        amount = 1
    else:
        amount = evaluate_amount(line.amount, ctx)
        if amount > MAX_AMOUNT:
            raise EvaluationError(f"amount {amount} of line {line.position} exceeds {MAX_AMOUNT}")
    if amount <= 0:
        reason = f"amount {amount} <= 0"
        return LineTrace(
            line.position, target, SKIPPED, reason, amount, False, "amount_not_positive", reward_type
        ), None

    locked = not lock_satisfied(line.lock_condition, lock_profile(target)) if line.lock_condition else False

    def skipped(reason: str, code: str) -> tuple[LineTrace, None]:
        return LineTrace(line.position, target, SKIPPED, reason, amount, locked, code, reward_type), None

    if line.max_per_target is not None:
        already = counters.granted_count(line.id, target) + counters.planned[(line.id, target)]
        if already >= line.max_per_target:
            return skipped(f"max_per_target reached ({already} of {line.max_per_target})", "cap_reached")

    cap_period_key = ""
    if line.max_per_target_per_period is not None and line.period:
        cap_period_key = period_key(line.period, moment)
        lookup = (line.id, target, cap_period_key)
        already = counters.period_count(*lookup) + counters.planned_periods[lookup]
        if already >= line.max_per_target_per_period:
            reason = (
                f"max_per_target_per_period reached ({already} of {line.max_per_target_per_period} this {line.period})"
            )
            return skipped(reason, "period_cap_reached")

    charge = 0
    code = ""
    if budget_key and reward_type == RewardLine.RewardType.POINTS:
        left = rule.budget - counters.budget_used(rule.pk, budget_key) - counters.budget_spent[(rule.pk, budget_key)]
        if left <= 0 or (amount > left and rule.budget_policy == BudgetPolicy.SKIP):
            return skipped(
                f"budget exhausted ({max(left, 0)} of {rule.budget} left, {amount} asked)", "budget_exhausted"
            )
        if amount > left:
            amount, code = left, f"budget_partial:{left}"
        charge = amount
        counters.budget_spent[(rule.pk, budget_key)] += charge

    if line.max_per_target is not None:
        counters.planned[(line.id, target)] += 1
    if cap_period_key:
        counters.planned_periods[(line.id, target, cap_period_key)] += 1

    if locked:
        reason, code = f"locked until {line.lock_condition}", code or f"locked:{line.lock_condition}"
    else:
        reason = f"ok, budget paid {amount} of what was asked" if code else "ok"
    action = PlannedAction(
        rule_id=rule.pk,
        rule_code=rule.code,
        rule_version=rule.version,
        line_id=line.pk,
        line_position=line.position,
        target_user_id=target,
        reward_type=reward_type,
        amount=amount,
        params=copy.deepcopy(line.params),
        lock_condition=line.lock_condition,
        locked=locked,
        max_per_target=line.max_per_target,
        budget_key=budget_key if charge else "",
        budget_charge=charge,
        cap_period_key=cap_period_key,
    )
    return LineTrace(line.position, target, FIRED, reason, amount, locked, code or FIRED, reward_type), action


def _upline_of_user_ids(upline: Callable[[str, int], str | None]) -> Callable[[str, int], str | None]:
    """``upline`` for user ids only (SPEC §5): another text fails the rule instead of reaching the query."""

    def checked(user: str, n: int) -> str | None:
        problem = user_id_problem(user)
        if problem:
            raise EvaluationError(f"upline() of a value that is not a user id: {problem}")
        return upline(user, n)

    return checked


def plan(
    *,
    event: EventInput,
    rules: Sequence[Rule],
    profile: Callable[[str], ProfileView | None],
    upline: Callable[[str, int], str | None],
    granted_count: Callable[[int, str], int],
    lock_profile: Callable[[str], ProfileView | None] | None = None,
    period_count: Callable[[int, str, str], int] | None = None,
    budget_used: Callable[[int, str], int] | None = None,
    lines_of: Callable[[Rule], Sequence[RewardLine]] | None = None,
) -> Plan:
    """Evaluate ``rules`` (the active rules of the event's type, lines prefetched) against ``event``.

    Rules run by priority, then code. A rule outside its validity window (on ``occurred_at``, else
    ``received_at``) is skipped; a rule whose condition is false does not match; a matched rule with
    ``stop_processing`` ends the run. ``granted_count(line_id, target)`` is how many actions that
    line already created for that target (for ``max_per_target``); ``period_count(line_id, target,
    period_key)`` the same within one calendar period (``max_per_target_per_period``);
    ``budget_used(rule_id, period_key)`` the points a budgeted rule already paid in its period
    (both default to none). Actions planned earlier in this same run count too. A budgeted rule's
    counter is read when the rule matches, before its lines, then each line's caps: one order for
    every event, so the ingest's row locks never form a cycle. ``lock_profile(target)`` gives the
    profile a line's ``lock_condition`` is checked against (default: ``profile``); ingestion passes
    one that first serialises the check with profile upgrades of that user. ``lines_of(rule)`` gives
    a rule's lines (default: its prefetched ``rewards``; a backtest passes unsaved ones). Raises
    RuleEvaluationFailed, with the trace so far, when any expression fails at run time.
    """
    ctx = EvaluationContext(
        event_type=event.event_type,
        actor=event.actor_user_id,
        primary_subject=event.primary_subject_user_id,
        context=event.context if event.context is not None else {},
        profile=profile,
        upline=_upline_of_user_ids(upline),
    )
    moment = event.occurred_at or event.received_at
    actions: list[PlannedAction] = []
    traces: list[RuleTrace] = []
    counters = Counters(
        granted_count=granted_count,
        period_count=period_count or _zero,
        budget_used=budget_used or _zero,
        planned=Counter(),
        planned_periods=Counter(),
        budget_spent=Counter(),
    )
    stopped_by: str | None = None

    for rule in sorted(rules, key=lambda r: (r.priority, r.code)):
        if stopped_by is not None:
            reason = f"not evaluated: {stopped_by} stopped processing"
            traces.append(RuleTrace(rule.code, rule.version, False, reason, code=f"stopped_by:{stopped_by}"))
            continue
        if not rule.is_active:
            traces.append(RuleTrace(rule.code, rule.version, False, "inactive", code="inactive"))
            continue
        if rule.event_type != event.event_type:
            reason = f"other event type {rule.event_type}"
            traces.append(RuleTrace(rule.code, rule.version, False, reason, code="other_event_type"))
            continue
        refusal = _window_refusal(rule, moment)
        if refusal:
            traces.append(RuleTrace(rule.code, rule.version, False, refusal, code="outside_window"))
            continue

        line_traces: list[LineTrace] = []
        try:
            if not evaluate_condition(rule.condition, ctx):
                traces.append(RuleTrace(rule.code, rule.version, False, "condition is false", code="condition_false"))
                continue
            budget_key = ""
            if rule.budget is not None:
                budget_key = period_key(rule.budget_period, moment)
                counters.budget_used(rule.pk, budget_key)  # locks the budget row before any line's rows
            for line in lines_of(rule) if lines_of is not None else rule.rewards.all():
                line_trace, action = _plan_line(
                    rule=rule,
                    line=line,
                    ctx=ctx,
                    lock_profile=lock_profile or profile,
                    counters=counters,
                    moment=moment,
                    budget_key=budget_key,
                )
                line_traces.append(line_trace)
                if action is not None:
                    actions.append(action)
        except (EvaluationError, ExpressionError) as exc:
            traces.append(RuleTrace(rule.code, rule.version, False, str(exc), tuple(line_traces), code="error"))
            raise RuleEvaluationFailed(rule.code, str(exc), tuple(traces)) from exc

        reason = "condition is true" if rule.condition.strip() else "no condition"
        if rule.stop_processing:
            stopped_by = rule.code
            reason += "; stop_processing: lower-priority rules do not run"
        traces.append(RuleTrace(rule.code, rule.version, True, reason, tuple(line_traces), code="matched"))

    return Plan(actions=tuple(actions), trace=tuple(traces))
