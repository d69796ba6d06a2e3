"""Rows the dispatch tests start from: a rule, an event, and reward actions in a given state."""

import itertools
from datetime import timedelta

from django.utils import timezone

from connect.models import EconomicEvent, RewardAction
from points.models import Transaction
from points.verification import ledger_verify
from rules.services import rule_save_from_dict

_sequence = itertools.count(1)


def rule_create(code: str = "dispatch_rule", *, reward_type: str = "points", amount: str = "10", params=None):
    data = {
        "code": code, "name": code, "event_type": "quest.completed", "condition": "", "priority": 100,
        "is_active": True, "stop_processing": False, "valid_from": None, "valid_until": None,
        "rewards": [{"target": "actor", "reward_type": reward_type, "amount": amount, "params": params or {},
                     "lock_condition": "", "max_per_target": None}],
    }  # fmt: skip
    rule, _ = rule_save_from_dict(data=data)
    return rule


def event_create(*, actor: str = "alice", external_id: str | None = None) -> EconomicEvent:
    return EconomicEvent.objects.create(
        source_service="quest_service",
        external_id=external_id or f"evt-{next(_sequence)}",
        event_type="quest.completed",
        actor_user_id=actor,
        payload_hash="0" * 64,
        status=EconomicEvent.Status.PROCESSED,
    )


def action_create(
    *,
    rule,
    event=None,
    target: str = "alice",
    reward_type: str = "points",
    amount: int = 10,
    params=None,
    status: str = RewardAction.Status.PENDING,
    age_seconds: float = 0,
    **fields,
) -> RewardAction:
    """An action as ingest stores it; ``age_seconds`` back-dates updated_at (as if nobody touched it)."""
    moment = timezone.now() - timedelta(seconds=age_seconds)
    return RewardAction.objects.create(
        event=event or event_create(actor=target),
        rule=rule,
        rule_code=rule.code,
        rule_version=rule.version,
        target_user_id=target,
        reward_type=reward_type,
        amount=amount,
        params=params or {},
        status=status,
        next_attempt_at=fields.pop("next_attempt_at", moment if status == RewardAction.Status.PENDING else None),
        created_at=moment,
        updated_at=moment,
        **fields,
    )


def credits_per_action(action_ids) -> dict[str, int]:
    """How many ledger transactions exist under each action id (the exactly-once check)."""
    ids = [str(pk) for pk in action_ids]
    counts = dict.fromkeys(ids, 0)
    for external_id in Transaction.objects.filter(external_id__in=ids).values_list("external_id", flat=True):
        counts[external_id] += 1
    return counts


def assert_ledger_ok() -> None:
    broken = {check.name: check.offenders for check in ledger_verify() if not check.ok}
    assert not broken, broken
