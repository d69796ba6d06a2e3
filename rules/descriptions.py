"""Rules in words, for people: what a rule pays, line by line."""

from .models import LockCondition, RewardLine, Rule

_LOCK_WORDS = {LockCondition.VIP_OR_PRO: "VIP or PRO", LockCondition.VIP: "VIP", LockCondition.PRO: "PRO"}


def line_in_words(line: RewardLine) -> str:
    """e.g. "primary_subject: 100 points", "actor: badge quest_master_10, once",
    "upline(actor, 1): floor(context.amount / 100) points, when VIP or PRO"."""
    amount = (line.amount or "").strip()
    if line.reward_type == RewardLine.RewardType.NFT:
        badge = line.params.get("badge_type") if isinstance(line.params, dict) else None
        what = f"badge {badge}" if badge else "an NFT badge"
    elif line.reward_type == RewardLine.RewardType.G2A_OFFCHAIN:
        what = f"{amount} G2A tokens"
    else:
        what = f"{amount} points"
    words = [f"{line.target}: {what}"]
    if line.lock_condition:
        words.append(f"when {_LOCK_WORDS.get(line.lock_condition, line.lock_condition)}")
    if line.max_per_target == 1:
        words.append("once")
    elif line.max_per_target:
        words.append(f"at most {line.max_per_target} times")
    per_period = getattr(line, "max_per_target_per_period", None)
    period = getattr(line, "period", None)
    if per_period and period:
        words.append(f"at most {per_period} per {period}")
    return ", ".join(words)


def rule_lines_in_words(rule: Rule) -> list[str]:
    """Each reward line of the rule in words, in order."""
    return [line_in_words(line) for line in rule.rewards.all()]


def rule_pays_in_words(rule: Rule) -> str:
    """Every reward line of the rule in words, in order, separated by "; "."""
    return "; ".join(rule_lines_in_words(rule)) or "nothing"
