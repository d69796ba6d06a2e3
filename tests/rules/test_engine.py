"""The rule engine, run without a database: rules are built in memory, profiles and the upline are stubs."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from rules import engine
from rules.demo import DEMO_RULES_PATH
from rules.expressions import ProfileView
from rules.models import RewardLine
from rules.services import rule_from_dict

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def build_rule(rule_id: int, data: dict, *, version: int = 1):
    """A validated, unsaved rule with ids and its lines in the prefetch cache, as the selector gives it."""
    rule, lines = rule_from_dict(data=data)
    rule.pk = rule_id
    rule.version = version
    for number, line in enumerate(lines, start=1):
        line.pk = rule_id * 100 + number
        line.rule = rule
    cached = RewardLine.objects.all()
    cached._result_cache = lines
    cached._prefetch_done = True
    rule._prefetched_objects_cache = {"rewards": cached}
    return rule


def rule_data(code="r", *, event_type="quest.completed", rewards=None, **fields):
    data = {"code": code, "name": code, "event_type": event_type}
    data.update(fields)
    data["rewards"] = rewards or [{"target": "actor", "reward_type": "points", "amount": "10"}]
    return data


def line(target="actor", amount="10", reward_type="points", **fields):
    return {"target": target, "reward_type": reward_type, "amount": amount, **fields}


def event(event_type="quest.completed", *, actor="alice", subject=None, context=None, occurred_at=None):
    return engine.EventInput(
        event_type=event_type,
        actor_user_id=actor,
        primary_subject_user_id=subject,
        context=context or {},
        occurred_at=occurred_at,
        received_at=NOW,
    )


def no_profile(user_id):
    return None


def no_upline(user_id, level):
    return None


def never_granted(line_id, target):
    return 0


def run(ev, rules, *, profile=no_profile, upline=no_upline, granted_count=never_granted):
    return engine.plan(event=ev, rules=rules, profile=profile, upline=upline, granted_count=granted_count)


def summary(result):
    return [(a.rule_code, a.target_user_id, a.reward_type, a.amount, a.locked) for a in result.actions]


# --- order, stop_processing, validity ---------------------------------------------------------


def test_rules_run_in_priority_order_then_code():
    late = build_rule(1, rule_data("late", priority=200, rewards=[line(amount="1")]))
    early = build_rule(2, rule_data("early", priority=50, rewards=[line(amount="2")]))
    tie_b = build_rule(3, rule_data("tie_b", priority=100, rewards=[line(amount="3")]))
    tie_a = build_rule(4, rule_data("tie_a", priority=100, rewards=[line(amount="4")]))

    result = run(event(), [late, tie_b, early, tie_a])

    assert [a.rule_code for a in result.actions] == ["early", "tie_a", "tie_b", "late"]
    assert [t.rule_code for t in result.trace] == ["early", "tie_a", "tie_b", "late"]
    assert all(t.matched for t in result.trace)


def test_a_matched_stop_processing_rule_ends_the_run():
    stopper = build_rule(1, rule_data("stopper", priority=10, stop_processing=True))
    lower = build_rule(2, rule_data("lower", priority=20))

    result = run(event(), [lower, stopper])

    assert [a.rule_code for a in result.actions] == ["stopper"]
    stopper_trace, lower_trace = result.trace
    assert stopper_trace.matched and "stop_processing" in stopper_trace.reason
    assert not lower_trace.matched
    assert "stopper stopped processing" in lower_trace.reason
    assert lower_trace.lines == ()


def test_stop_processing_applies_only_when_the_rule_matches():
    stopper = build_rule(1, rule_data("stopper", priority=10, stop_processing=True, condition="context.vip == true"))
    lower = build_rule(2, rule_data("lower", priority=20))

    result = run(event(context={"vip": False}), [stopper, lower])

    assert [a.rule_code for a in result.actions] == ["lower"]
    assert result.trace[0].reason == "condition is false"


def test_false_condition_does_not_match_and_true_condition_fires():
    level_one = build_rule(1, rule_data("level_one", condition="context.level == 1"))

    assert run(event(context={"level": 2}), [level_one]).actions == ()
    assert summary(run(event(context={"level": 1}), [level_one])) == [("level_one", "alice", "points", 10, False)]


def test_validity_window_is_checked_on_occurred_at_before_received_at():
    window = build_rule(
        1,
        rule_data(
            "window",
            valid_from=(NOW - timedelta(days=10)).isoformat(),
            valid_until=(NOW - timedelta(days=5)).isoformat(),
        ),
    )

    # received now (outside), but occurred inside the window: it applies.
    inside = run(event(occurred_at=NOW - timedelta(days=7)), [window])
    assert summary(inside) == [("window", "alice", "points", 10, False)]

    # No occurred_at: received_at (now) is after valid_until.
    outside = run(event(occurred_at=None), [window])
    assert outside.actions == ()
    assert not outside.trace[0].matched and "valid_until" in outside.trace[0].reason

    too_early = run(event(occurred_at=NOW - timedelta(days=11)), [window])
    assert too_early.actions == () and "valid_from" in too_early.trace[0].reason

    # valid_from is inclusive, valid_until exclusive.
    assert len(run(event(occurred_at=NOW - timedelta(days=10)), [window]).actions) == 1
    assert run(event(occurred_at=NOW - timedelta(days=5)), [window]).actions == ()


def test_received_at_is_used_when_there_is_no_occurred_at():
    future = build_rule(1, rule_data("future", valid_from=(NOW + timedelta(hours=1)).isoformat()))
    current = build_rule(2, rule_data("current", valid_from=(NOW - timedelta(hours=1)).isoformat()))

    result = run(event(), [future, current])

    assert [a.rule_code for a in result.actions] == ["current"]
    traces = {t.rule_code: t for t in result.trace}
    assert not traces["future"].matched and "not valid yet" in traces["future"].reason


def test_inactive_rules_and_other_event_types_are_not_run():
    inactive = build_rule(1, rule_data("inactive", is_active=False))
    other = build_rule(2, rule_data("other", event_type="voucher.premium_purchased"))

    result = run(event(), [inactive, other])

    assert result.actions == ()
    assert {t.rule_code: t.matched for t in result.trace} == {"inactive": False, "other": False}


# --- lines --------------------------------------------------------------------------------------


def test_a_null_or_empty_target_skips_only_that_line():
    rule = build_rule(
        1,
        rule_data(
            "targets",
            rewards=[line("context.missing_id"), line("context.empty_id"), line("primary_subject"), line("actor")],
        ),
    )

    result = run(event(context={"empty_id": ""}), [rule])

    assert summary(result) == [("targets", "alice", "points", 10, False)]
    outcomes = [(t.position, t.outcome, t.reason) for t in result.trace[0].lines]
    assert outcomes == [
        (1, "skipped", "no target"),
        (2, "skipped", "no target"),
        (3, "skipped", "no target"),
        (4, "fired", "ok"),
    ]


def test_amounts_round_down_and_zero_or_negative_amounts_skip_the_line():
    rule = build_rule(
        1,
        rule_data(
            "amounts",
            rewards=[
                line(amount="context.points - 10"),
                line(amount="context.points - 11"),
                line(amount="context.points * 3 / 4"),
                line(amount="floor(context.points / 2)"),
            ],
        ),
    )

    result = run(event(context={"points": 10}), [rule])

    assert [a.amount for a in result.actions] == [7, 5]
    traces = result.trace[0].lines
    assert [(t.outcome, t.amount) for t in traces[:2]] == [("skipped", 0), ("skipped", -1)]
    assert "<= 0" in traces[0].reason


def test_nft_amount_is_always_one():
    rule = build_rule(
        1,
        rule_data("badge", rewards=[line(reward_type="nft", amount="context.count * 7", params={"badge_type": "b1"})]),
    )

    result = run(event(context={"count": 5}), [rule])

    (action,) = result.actions
    assert (action.reward_type, action.amount, action.params) == ("nft", 1, {"badge_type": "b1"})


@pytest.mark.parametrize(
    ("lock", "profile", "locked"),
    [
        ("", None, False),
        ("vip_or_pro", None, True),
        ("vip_or_pro", ProfileView(user_id="bob"), True),
        ("vip_or_pro", ProfileView(user_id="bob", is_vip=True), False),
        ("vip_or_pro", ProfileView(user_id="bob", is_pro=True), False),
        ("vip", ProfileView(user_id="bob", is_pro=True), True),
        ("vip", ProfileView(user_id="bob", is_vip=True), False),
        ("pro", ProfileView(user_id="bob", is_vip=True), True),
        ("pro", ProfileView(user_id="bob", is_pro=True), False),
    ],
)
def test_lock_condition_is_checked_against_the_target_profile(lock, profile, locked):
    rule = build_rule(1, rule_data("locked", rewards=[line("primary_subject", lock_condition=lock)]))
    asked = []

    def profile_of(user_id):
        asked.append(user_id)
        return profile

    result = run(event(subject="bob"), [rule], profile=profile_of)

    (action,) = result.actions
    assert (action.target_user_id, action.locked, action.lock_condition) == ("bob", locked, lock)
    assert result.trace[0].lines[0].locked is locked
    assert asked == (["bob"] if lock else [])


def test_max_per_target_counts_earlier_grants():
    rule = build_rule(1, rule_data("badge", rewards=[line(max_per_target=2)]))
    line_id = 101

    def granted(counts):
        return lambda line_id_, target: counts.get((line_id_, target), 0)

    assert len(run(event(), [rule], granted_count=granted({(line_id, "alice"): 1})).actions) == 1
    capped = run(event(), [rule], granted_count=granted({(line_id, "alice"): 2}))
    assert capped.actions == ()
    assert capped.trace[0].lines[0].reason.startswith("max_per_target reached")
    # Another target's grants do not count.
    assert len(run(event(), [rule], granted_count=granted({(line_id, "zoe"): 5})).actions) == 1


def test_max_per_target_counts_actions_planned_earlier_in_the_same_run():
    rule = build_rule(1, rule_data("badge", rewards=[line(max_per_target=1)]))

    result = run(event(), [rule, rule])

    assert len(result.actions) == 1
    assert [t.lines[0].outcome for t in result.trace] == ["fired", "skipped"]


def test_planned_action_carries_rule_and_line_identity():
    rule = build_rule(7, rule_data("ident", rewards=[line(), line("primary_subject", amount="3")]), version=4)

    result = run(event(subject="bob"), [rule])

    second = result.actions[1]
    assert (second.rule_id, second.rule_code, second.rule_version) == (7, "ident", 4)
    assert (second.line_id, second.line_position, second.target_user_id, second.amount) == (702, 2, "bob", 3)
    assert second.max_per_target is None


# --- failures -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "context"),
    [("context.a / context.b", {"a": 1, "b": 0}), ("context.missing + 1", {}), ("context.name * 2 - 1", {"name": "x"})],
)
def test_an_evaluation_error_fails_the_whole_plan(amount, context):
    fine = build_rule(1, rule_data("fine", priority=1))
    broken = build_rule(2, rule_data("broken", priority=2, rewards=[line(amount=amount)]))

    with pytest.raises(engine.RuleEvaluationFailed) as failure:
        run(event(context=context), [fine, broken])

    assert failure.value.rule_code == "broken"
    assert failure.value.message


def test_an_amount_beyond_the_ledger_limit_fails_the_plan():
    rule = build_rule(1, rule_data("huge", rewards=[line(amount="context.n * 1000")]))

    with pytest.raises(engine.RuleEvaluationFailed):
        run(event(context={"n": 10**12}), [rule])


# --- the demo rules (SPEC §10) --------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_rules():
    payload = json.loads(DEMO_RULES_PATH.read_text())
    return [build_rule(number, data) for number, data in enumerate(payload["rules"], start=1)]


def run_demo(demo_rules, ev, **callables):
    return run(ev, [r for r in demo_rules if r.event_type == ev.event_type], **callables)


def test_demo_referral_first_level(demo_rules):
    joined = event("referral.joined", actor="user_new", subject="user_sponsor", context={"level": 1})
    assert summary(run_demo(demo_rules, joined)) == [
        ("referral_first_level_registration", "user_sponsor", "points", 100, False)
    ]
    deeper = event("referral.joined", actor="user_new", subject="user_sponsor", context={"level": 2})
    assert run_demo(demo_rules, deeper).actions == ()


def test_demo_referral_second_level_is_locked_until_vip_or_pro(demo_rules):
    subjoined = event("referral.subjoined", actor="user_sub", subject="user_sponsor", context={"level": 2})

    plain = run_demo(demo_rules, subjoined, profile=lambda u: ProfileView(user_id=u))
    assert summary(plain) == [("referral_second_level_deferred", "user_sponsor", "points", 50, True)]
    assert plain.actions[0].lock_condition == "vip_or_pro"

    vip = run_demo(demo_rules, subjoined, profile=lambda u: ProfileView(user_id=u, is_vip=True))
    assert summary(vip) == [("referral_second_level_deferred", "user_sponsor", "points", 50, False)]


def test_demo_quest_completed_and_the_badge_at_ten(demo_rules):
    ninth = event(
        "quest.completed",
        actor="player",
        subject="author",
        context={"base_reward_points": 45, "total_quests_completed": 9},
    )
    assert summary(run_demo(demo_rules, ninth)) == [
        ("quest_completed_rewards", "player", "points", 45, False),
        ("quest_completed_rewards", "author", "points", 22, False),
    ]

    tenth = event(
        "quest.completed",
        actor="player",
        subject="author",
        context={"base_reward_points": 45, "total_quests_completed": 10},
    )
    result = run_demo(demo_rules, tenth)
    assert summary(result) == [
        ("quest_completed_rewards", "player", "points", 45, False),
        ("quest_completed_rewards", "author", "points", 22, False),
        ("quest_master_badge", "player", "nft", 1, False),
    ]
    badge = result.actions[-1]
    assert (badge.params, badge.max_per_target) == ({"badge_type": "quest_master_10"}, 1)

    already = run_demo(demo_rules, tenth, granted_count=lambda line_id, target: 1 if line_id == badge.line_id else 0)
    assert [a.rule_code for a in already.actions] == ["quest_completed_rewards", "quest_completed_rewards"]


def test_demo_premium_voucher(demo_rules):
    bought = event(
        "voucher.premium_purchased",
        actor="buyer",
        context={"rf_partner_id": "partner", "pro_promoter_id": "promoter", "amount": 1234},
    )
    assert summary(run_demo(demo_rules, bought)) == [
        ("voucher_premium_purchase", "partner", "g2a_offchain", 123, False),
        ("voucher_premium_purchase", "promoter", "points", 61, False),
        ("voucher_premium_purchase", "buyer", "points", 10, False),
    ]
    no_promoter = event(
        "voucher.premium_purchased", actor="buyer", context={"rf_partner_id": "partner", "amount": 1000}
    )
    assert [a.target_user_id for a in run_demo(demo_rules, no_promoter).actions] == ["partner", "buyer"]


def test_demo_rielt_booking_rewards_the_upline(demo_rules):
    sponsors = {("tenant", 1): "sponsor1", ("tenant", 2): "sponsor2"}
    paid = event("rielt.booking_paid", actor="tenant", context={"amount": 2599, "host_user_id": "host"})

    result = run_demo(demo_rules, paid, upline=lambda user, level: sponsors.get((user, level)))

    assert summary(result) == [
        ("rielt_booking_paid", "tenant", "points", 25, False),
        ("rielt_booking_paid", "host", "points", 20, False),
        ("rielt_booking_paid", "sponsor1", "points", 30, False),
        ("rielt_booking_paid", "sponsor2", "points", 10, False),
    ]
    # Without a referral tree the upline lines are skipped, the rest still fires.
    assert [a.target_user_id for a in run_demo(demo_rules, paid).actions] == ["tenant", "host"]


def test_demo_rf_partner_review(demo_rules):
    review = event("rf_partner.review_created", actor="reviewer", context={"pro_curator_id": "curator"})
    assert summary(run_demo(demo_rules, review)) == [
        ("rf_partner_review_created", "reviewer", "points", 5, False),
        ("rf_partner_review_created", "curator", "points", 2, False),
    ]


def test_demo_rules_cover_the_seven_workflows(demo_rules):
    assert sorted(r.code for r in demo_rules) == sorted(
        [
            "referral_first_level_registration",
            "referral_second_level_deferred",
            "quest_completed_rewards",
            "voucher_premium_purchase",
            "rielt_booking_paid",
            "rf_partner_review_created",
            "quest_master_badge",
        ]
    )
