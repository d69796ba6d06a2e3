"""Counting a reward action back out of the counters it was counted in (reversals, SPEC §12).

A reversal of ``amount`` points of an action gives them back to its rule's budget (in the period
they were charged to); a reversal that takes back the whole action also counts it out of its line's
``max_per_target`` and ``max_per_target_per_period`` counters, so the reward can be earned again.
"""

from django.db import transaction
from django.db.models import F

from rules.budgets import budget_refund, cap_refund

from .models import RewardAction, RewardGrant


@transaction.atomic
def reward_action_counters_refund(*, action: RewardAction, amount: int, whole: bool) -> None:
    """Count ``amount`` of ``action`` back into its budget, and the action itself out of its caps
    when ``whole`` (nothing of it is left). Runs in the caller's transaction (the reversal's)."""
    if action.budget_period_key and amount > 0:
        budget_refund(rule_id=action.rule_id, period_key=action.budget_period_key, amount=min(amount, action.amount))
    if not whole or action.reward_line_id is None:
        return
    if action.cap_period_key:
        cap_refund(
            reward_line_id=action.reward_line_id,
            target_user_id=action.target_user_id,
            period_key=action.cap_period_key,
        )
    RewardGrant.objects.filter(
        reward_line_id=action.reward_line_id, target_user_id=action.target_user_id, count__gt=0
    ).update(count=F("count") - 1)
