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

from .expressions import (
    EvaluationContext,
    EvaluationError,
    ExpressionError,
    ProfileView,
    evaluate_amount,
    evaluate_condition,
    evaluate_target,
)
from .models import RewardLine, Rule, lock_satisfied

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


@dataclass(frozen=True)
class LineTrace:
    position: int
    target: str | None
    outcome: str  # "fired" | "skipped"
    reason: str
    amount: int | None
    locked: bool


@dataclass(frozen=True)
class RuleTrace:
    rule_code: str
    rule_version: int
    matched: bool
    reason: str
    lines: tuple[LineTrace, ...] = ()


@dataclass(frozen=True)
class Plan:
    actions: tuple[PlannedAction, ...]
    trace: tuple[RuleTrace, ...]


class RuleEvaluationFailed(Exception):
    """A rule could not be evaluated; the caller creates no action for the event at all."""

    def __init__(self, rule_code: str, message: str):
        self.rule_code = rule_code
        self.message = message
        super().__init__(f"rule {rule_code!r}: {message}")


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
    granted_count: Callable[[int, str], int],
    planned_counts: Counter,
) -> tuple[LineTrace, PlannedAction | None]:
    target = evaluate_target(line.target, ctx)
    if target is None or target == "":
        return LineTrace(line.position, None, SKIPPED, "no target", None, False), None
    target = str(target)
    problem = user_id_problem(target)
    if problem:  # SPEC §5: a rule's target is a user id like any other, or the event fails
        raise EvaluationError(f"target of line {line.position} is not a valid user id: {problem}")

    if line.reward_type == RewardLine.RewardType.NFT:
        amount = 1
    else:
        amount = evaluate_amount(line.amount, ctx)
        if amount > MAX_AMOUNT:
            raise EvaluationError(f"amount {amount} of line {line.position} exceeds {MAX_AMOUNT}")
    if amount <= 0:
        return LineTrace(line.position, target, SKIPPED, f"amount {amount} <= 0", amount, False), None

    locked = not lock_satisfied(line.lock_condition, lock_profile(target)) if line.lock_condition else False

    if line.max_per_target is not None:
        already = granted_count(line.id, target) + planned_counts[(line.id, target)]
        if already >= line.max_per_target:
            reason = f"max_per_target reached ({already} of {line.max_per_target})"
            return LineTrace(line.position, target, SKIPPED, reason, amount, locked), None
    planned_counts[(line.id, target)] += 1

    reason = f"locked until {line.lock_condition}" if locked else "ok"
    action = PlannedAction(
        rule_id=rule.pk,
        rule_code=rule.code,
        rule_version=rule.version,
        line_id=line.pk,
        line_position=line.position,
        target_user_id=target,
        reward_type=line.reward_type,
        amount=amount,
        params=copy.deepcopy(line.params),
        lock_condition=line.lock_condition,
        locked=locked,
        max_per_target=line.max_per_target,
    )
    return LineTrace(line.position, target, FIRED, reason, amount, locked), action


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
) -> Plan:
    """Evaluate ``rules`` (the active rules of the event's type, lines prefetched) against ``event``.

    Rules run by priority, then code. A rule outside its validity window (on ``occurred_at``, else
    ``received_at``) is skipped; a rule whose condition is false does not match; a matched rule with
    ``stop_processing`` ends the run. ``granted_count(line_id, target)`` is how many actions that
    line already created for that target (for ``max_per_target``); actions planned earlier in this
    same run count too. ``lock_profile(target)`` gives the profile a line's ``lock_condition`` is
    checked against (default: ``profile``); ingestion passes one that first serialises the check
    with profile upgrades of that user. Raises RuleEvaluationFailed when any expression fails at run time.
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
    planned_counts: Counter = Counter()
    stopped_by: str | None = None

    for rule in sorted(rules, key=lambda r: (r.priority, r.code)):
        if stopped_by is not None:
            traces.append(RuleTrace(rule.code, rule.version, False, f"not evaluated: {stopped_by} stopped processing"))
            continue
        if not rule.is_active:
            traces.append(RuleTrace(rule.code, rule.version, False, "inactive"))
            continue
        if rule.event_type != event.event_type:
            traces.append(RuleTrace(rule.code, rule.version, False, f"other event type {rule.event_type}"))
            continue
        refusal = _window_refusal(rule, moment)
        if refusal:
            traces.append(RuleTrace(rule.code, rule.version, False, refusal))
            continue

        try:
            if not evaluate_condition(rule.condition, ctx):
                traces.append(RuleTrace(rule.code, rule.version, False, "condition is false"))
                continue
            line_traces: list[LineTrace] = []
            for line in rule.rewards.all():
                line_trace, action = _plan_line(
                    rule=rule,
                    line=line,
                    ctx=ctx,
                    lock_profile=lock_profile or profile,
                    granted_count=granted_count,
                    planned_counts=planned_counts,
                )
                line_traces.append(line_trace)
                if action is not None:
                    actions.append(action)
        except (EvaluationError, ExpressionError) as exc:
            raise RuleEvaluationFailed(rule.code, str(exc)) from exc

        reason = "condition is true" if rule.condition.strip() else "no condition"
        if rule.stop_processing:
            stopped_by = rule.code
            reason += "; stop_processing: lower-priority rules do not run"
        traces.append(RuleTrace(rule.code, rule.version, True, reason, tuple(line_traces)))

    return Plan(actions=tuple(actions), trace=tuple(traces))
