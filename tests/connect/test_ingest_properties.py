"""Event ingestion under random rules and random events (hypothesis).

For any set of valid rules and any stream of valid events posted to ``/api/v1/events``:
- no request is answered with a server error;
- each event is ``processed`` with exactly the actions its fired lines call for, or ``failed``
  (a rule could not be evaluated) with none at all, or ``ignored`` — never a partial set;
- posting the same stream again answers every event with 200 and its stored state, and changes
  nothing: no event, action, grant, profile or ledger row is added or altered.

The expected actions come from a small reference reading of SPEC §6/§7 written here (priority
order, conditions, stop_processing, skipped lines, locks, max_per_target, the referral tree and
tiers), evaluated with the rule language's own evaluator.
"""

import functools
import uuid
from collections import Counter

import pytest
from django.db import transaction
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from config.api.fields import user_id_problem
from config.api.jsonbody import json_depth_problem
from connect.models import EconomicEvent, RewardAction, RewardGrant, UserProfile
from points.models import Account, Transaction
from points.verification import ledger_verify
from rules.expressions import (
    EvaluationContext,
    EvaluationError,
    ExpressionError,
    ProfileView,
    evaluate_amount,
    evaluate_condition,
    evaluate_target,
)
from rules.models import Rule, lock_satisfied
from rules.selectors import rules_cache_clear
from rules.services import rule_save_from_dict

SOURCE = "fuzz_service"
USERS = ["u1", "u2", "u3", "u4"]
RULE_TYPES = ["quest.completed", "referral.joined", "user.upgraded_to_vip", "user.upgraded_to_pro"]
EVENT_TYPES = [*RULE_TYPES, "nobody.listens"]
MAX_UPLINE_DEPTH = 10

CONDITIONS = [
    "",
    "",
    "",
    "context.level == 1",
    "context.n > 3",
    "context.n >= 0 and context.flag",
    "not context.flag",
    "actor_profile.is_vip",
    "subject_profile.tier == 'pro'",
    "context.n / context.d > 1",
    "len(context.tags) > 1",
    "'a' in context.tags or context.kind == 'b'",
    "upline(actor, 1) != null",
]
TARGETS = ["actor", "primary_subject", "context.partner", "upline(actor, 1)", "upline(actor, 2)", "context.n"]
# Values that are not user ids (SPEC §5): the event fails, as for any rule that cannot be evaluated.
BAD_TARGETS = ["'\\ud800' + actor", "actor + '/x'"]
AMOUNTS = [
    "10",
    "10",
    "25",
    "context.n",
    "floor(context.n * 5 / 100)",
    "context.n / context.d",
    "context.n - 5",
    "round(context.x)",
    "max(context.n, 1)",
    "abs(context.n) + 1",
    "context.big * 1000",
    "context.kind + 1",
]
LOCKS = ["", "", "vip_or_pro", "vip", "pro"]

# --- strategies ---------------------------------------------------------------------------------

lines = st.fixed_dictionaries(
    {
        "target": st.sampled_from(TARGETS) | st.sampled_from(TARGETS) | st.sampled_from(BAD_TARGETS),
        "reward_type": st.sampled_from(["points", "points", "points", "nft", "g2a_offchain"]),
        "amount": st.sampled_from(AMOUNTS),
        "lock_condition": st.sampled_from(LOCKS),
        "max_per_target": st.none() | st.integers(1, 2),
    }
)
rule_specs = st.fixed_dictionaries(
    {
        # Rules mostly share a type, so priorities and stop_processing meet each other.
        "event_type": st.sampled_from(["quest.completed", "quest.completed", "quest.completed", *RULE_TYPES]),
        "condition": st.sampled_from(CONDITIONS),
        "priority": st.integers(0, 3),
        "stop_processing": st.booleans(),
        "is_active": st.sampled_from([True, True, True, False]),
        "rewards": st.lists(lines, min_size=1, max_size=3),
    }
)
# Storable text only: NUL and lone surrogates are refused with a 400 before ingestion (tested elsewhere).
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=5)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**15), 10**15)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
contexts = st.fixed_dictionaries(
    {
        # Mostly what the rules expect, sometimes anything JSON allows (then a rule may fail).
        "n": st.integers(-20, 300) | st.integers(-20, 300) | json_scalars,
        "d": st.integers(1, 3) | st.just(0) | json_scalars,
    },
    optional={
        "level": st.sampled_from([1, 2, None, "1", True]),
        "flag": st.booleans() | json_scalars,
        "tags": st.lists(st.sampled_from(["a", "b", "c"]), max_size=3) | json_scalars,
        "kind": st.sampled_from(["a", "b", "c"]) | json_scalars,
        "partner": st.sampled_from([*USERS, ""]) | json_scalars,
        "x": st.floats(-1e3, 1e3) | json_scalars,
        "big": st.integers(0, 10**10),
        "nested": st.recursive(
            json_scalars,
            lambda inner: st.lists(inner, max_size=2) | st.dictionaries(texts, inner, max_size=2),
            max_leaves=5,
        )
        # Around the nesting limit: the body, its context and this make 32 levels at depth 30.
        | st.builds(
            lambda depth, leaf: functools.reduce(lambda v, _: [v], range(depth), leaf),
            st.integers(25, 40),
            json_scalars,
        ),  # fmt: skip
    },
)


def events_for(rule_types: list[str]):
    """Events mostly of the types the rules listen to, sometimes of a type nobody listens to."""
    return st.fixed_dictionaries(
        {
            "event_type": st.sampled_from(rule_types) | st.sampled_from(EVENT_TYPES),
            "actor_user_id": st.sampled_from(USERS),
            "primary_subject_user_id": st.none() | st.sampled_from(USERS),
            "context": contexts,
        }
    )


# --- the reference reading of the spec ------------------------------------------------------------


class Reference:
    """Profiles, grants and the expected actions of each event, kept apart from the application."""

    def __init__(self, rules: list[dict]):
        self.rules = sorted((r for r in rules if r["is_active"]), key=lambda r: (r["priority"], r["code"]))
        self.sponsor: dict[str, str] = {}
        self.vip: set[str] = set()
        self.pro: set[str] = set()
        self.known: set[str] = set()  # users with a profile row
        self.granted: Counter = Counter()  # (rule code, line index, target) -> actions made

    def profile(self, user_id):
        if not user_id or user_id not in self.known:
            return None
        tier = "pro" if user_id in self.pro else "vip" if user_id in self.vip else "basic"
        return ProfileView(
            user_id=user_id, tier=tier, is_vip=user_id in self.vip, is_pro=user_id in self.pro,
            sponsor=self.sponsor.get(user_id),
        )  # fmt: skip

    def upline(self, user_id, n):
        current, seen = user_id, {user_id}
        for _ in range(min(n, MAX_UPLINE_DEPTH)):
            sponsor = self.sponsor.get(current)
            if not sponsor or sponsor in seen:
                return None
            current = sponsor
            seen.add(current)
        return current

    def apply_profiles(self, event: dict) -> None:
        """SPEC §7 with the default event types; applied before the event's rules, kept if they fail."""
        actor, subject, context = event["actor_user_id"], event["primary_subject_user_id"], event["context"]
        if event["event_type"] == "referral.joined":
            level = context.get("level")
            first_level = level is None or (not isinstance(level, bool) and level == 1)
            if subject and subject != actor and first_level and not self._would_cycle(actor, subject):
                self.known.add(actor)
                self.sponsor.setdefault(actor, subject)
        if event["event_type"] == "user.upgraded_to_vip":
            self.known.add(actor)
            self.vip.add(actor)
        if event["event_type"] == "user.upgraded_to_pro":
            self.known.add(actor)
            self.pro.add(actor)

    def _would_cycle(self, user_id, sponsor_id) -> bool:
        ancestor = sponsor_id
        for _ in range(MAX_UPLINE_DEPTH):
            if ancestor == user_id:
                return True
            ancestor = self.upline(ancestor, 1)
            if ancestor is None:
                return False
        return False

    def expected(self, event: dict) -> tuple[str, list[tuple] | str]:
        """("processed"|"ignored", [(rule, target, type, amount, lock)]) or ("failed", rule code)."""
        self.apply_profiles(event)
        ctx = EvaluationContext(
            event_type=event["event_type"], actor=event["actor_user_id"], primary_subject=event["primary_subject_user_id"],
            context=event["context"], profile=self.profile, upline=self.upline,
        )  # fmt: skip
        planned, counts = [], Counter()
        for rule in self.rules:
            if rule["event_type"] != event["event_type"]:
                continue
            try:
                if not evaluate_condition(rule["condition"], ctx):
                    continue
                for index, line in enumerate(rule["rewards"]):
                    target = evaluate_target(line["target"], ctx)
                    if not target:
                        continue
                    if user_id_problem(target):
                        raise EvaluationError("target is not a user id")
                    amount = 1 if line["reward_type"] == "nft" else evaluate_amount(line["amount"], ctx)
                    if amount > 10**12:
                        raise EvaluationError("amount out of range")
                    if amount <= 0:
                        continue
                    key = (rule["code"], index, target)
                    if line["max_per_target"] is not None and self.granted[key] + counts[key] >= line["max_per_target"]:
                        continue
                    counts[key] += 1
                    locked = not lock_satisfied(line["lock_condition"], self.profile(target))
                    lock = line["lock_condition"] if locked else ""
                    planned.append((rule["code"], target, line["reward_type"], amount, lock))
            except (EvaluationError, ExpressionError):
                return "failed", rule["code"]
            if rule["stop_processing"]:
                break
        self.granted.update(counts)
        return ("processed" if planned else "ignored"), planned


# --- the property ---------------------------------------------------------------------------------


def state_snapshot() -> dict:
    """Everything a replay must leave exactly as it was."""
    return {
        "events": sorted(EconomicEvent.objects.values_list("pk", "status", "error", "payload_hash")),
        "actions": sorted(
            RewardAction.objects.values_list("pk", "event_id", "status", "attempts", "last_error", "result", "amount")
        ),
        "grants": sorted(RewardGrant.objects.values_list("reward_line_id", "target_user_id", "count")),
        "profiles": sorted(UserProfile.objects.values_list("user_id", "sponsor_id", "is_vip", "is_pro")),
        "transactions": Transaction.objects.count(),
        "accounts": sorted(Account.objects.values_list("pk", "balance", "held")),
    }


def action_key(action: dict) -> tuple:
    return (
        action["rule"],
        action["target_user_id"],
        action["reward_type"],
        action["amount"],
        action["locked_until_condition"],
    )


@pytest.fixture
def poster(make_client, django_capture_on_commit_callbacks):
    _, key = make_client(SOURCE, ["events:write", "events:read"])
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")

    def post(body: dict):
        # Dispatch runs as it would after commit: points are credited, unconfigured channels wait.
        with django_capture_on_commit_callbacks(execute=True):
            response = api.post("/api/v1/events", body, format="json")
        assert response.status_code < 500, response.content
        return response

    post.api = api
    return post


@pytest.mark.django_db
@given(rules=st.lists(rule_specs, min_size=1, max_size=4), data=st.data())
@settings(
    max_examples=50,
    deadline=None,
    # A failing stream is reported as found: shrinking it through HTTP can take minutes.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_random_events_under_random_rules_are_all_or_nothing_and_replay_changes_nothing(poster, rules, data):
    stream = data.draw(st.lists(events_for([r["event_type"] for r in rules]), min_size=1, max_size=8), label="events")
    with transaction.atomic():  # each example starts from an empty inbox
        _run(poster, rules, stream)
        transaction.set_rollback(True)


@pytest.mark.django_db(transaction=True)
@given(rules=st.lists(rule_specs, min_size=1, max_size=4), data=st.data())
@settings(
    max_examples=25,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_random_events_on_the_production_path_are_all_or_nothing_and_replay_changes_nothing(poster, rules, data):
    """As above, each request in autocommit mode as in production, so events take the one-statement
    path whenever their plan allows it; each example starts from an empty inbox and no rules."""
    stream = data.draw(st.lists(events_for([r["event_type"] for r in rules]), min_size=1, max_size=8), label="events")
    try:
        _run(poster, rules, stream)
    finally:
        _inbox_and_rules_emptied()


def _inbox_and_rules_emptied() -> None:
    RewardAction.objects.all().delete()
    RewardGrant.objects.all().delete()
    EconomicEvent.objects.all().delete()
    UserProfile.objects.all().delete()
    Rule.objects.all().delete()
    rules_cache_clear()


def _run(poster, rules, stream):
    prefix = uuid.uuid4().hex[:6]
    specs = []
    for index, spec in enumerate(rules):
        spec = {**spec, "code": f"r{index}_{prefix}"}
        rule_save_from_dict(
            data={
                **spec, "name": spec["code"], "valid_from": None, "valid_until": None,
                "rewards": [{**line, "params": {"badge_type": "b"} if line["reward_type"] == "nft" else {}}
                            for line in spec["rewards"]],
            }
        )  # fmt: skip
        specs.append(spec)
    reference = Reference(specs)

    bodies = [
        {**event, "external_id": f"e{n}", "source_service": SOURCE, "context": event["context"]}
        for n, event in enumerate(stream)
    ]
    accepted = []
    for body in bodies:
        response = poster(body)
        if json_depth_problem(body):  # refused before anything is stored or projected
            assert response.status_code == 400, response.content
            assert response.json()["error"]["details"] == {"body": ["JSON nested deeper than 32 levels."]}
            assert not EconomicEvent.objects.filter(external_id=body["external_id"]).exists()
            continue
        accepted.append(body)
        assert response.status_code == 201, response.content
        stored = response.json()
        status, expected = reference.expected(body)
        event(f"event {status}")  # shown by --hypothesis-show-statistics
        stored_actions = RewardAction.objects.filter(event_id=stored["id"]).count()
        assert stored["status"] == status, (body, stored)
        assert stored_actions == len(stored["reward_actions"])
        if status == "failed":
            assert stored["reward_actions"] == [] and stored_actions == 0
            assert stored["error"].startswith(f"Rule '{expected}' could not be evaluated"), stored["error"]
        else:
            assert stored["error"] == ""
            assert Counter(action_key(a) for a in stored["reward_actions"]) == Counter(expected), (body, stored)
    assert {check.name: check.offenders for check in ledger_verify() if not check.ok} == {}

    before = state_snapshot()
    for body in accepted:
        response = poster(body)
        assert response.status_code == 200, response.content
        assert response.json() == poster.api.get(f"/api/v1/events/{response.json()['id']}").json()
    assert state_snapshot() == before
