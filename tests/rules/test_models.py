import json
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import IntegrityError, transaction
from django.urls import reverse

from rules.expressions import ProfileView
from rules.models import RewardLine, Rule, RuleVersion, lock_satisfied
from rules.selectors import rule_version_get, rules_for_event_type
from rules.services import rule_save_from_dict

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def make_rule(**fields) -> Rule:
    values = {"code": "quest_rule", "name": "Quest rule", "event_type": "quest.completed"}
    values.update(fields)
    return Rule(**values)


def make_line(**fields) -> RewardLine:
    values = {"target": "actor", "reward_type": "points", "amount": "10"}
    values.update(fields)
    return RewardLine(**values)


def field_errors(instance, **kwargs) -> dict:
    with pytest.raises(ValidationError) as refused:
        instance.full_clean(**kwargs)
    return refused.value.message_dict


# --- Rule validation ------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_valid_rule_passes_full_clean():
    make_rule(condition="context.total_quests_completed >= 10 and actor_profile.is_vip").full_clean()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "condition",
    ["context.level ==", "context.level = 1", "__import__('os')", "context.items()", "context._secret == 1"],
)
def test_a_bad_condition_is_refused_at_its_field(condition):
    errors = field_errors(make_rule(condition=condition))
    assert list(errors) == ["condition"]


@pytest.mark.django_db
def test_a_private_context_path_names_the_problem():
    (message,) = field_errors(make_rule(condition="context.user._token == 1"))["condition"]
    assert "_token" in message


@pytest.mark.django_db
@pytest.mark.parametrize(
    "event_type", ["quest", "Quest.Completed", "quest..completed", "quest.completed.", "quest completed"]
)
def test_a_bad_event_type_is_refused(event_type):
    assert list(field_errors(make_rule(event_type=event_type))) == ["event_type"]


@pytest.mark.django_db
@pytest.mark.parametrize("until", [T0, T0 - timedelta(seconds=1)])
def test_valid_from_must_be_before_valid_until(until):
    errors = field_errors(make_rule(valid_from=T0, valid_until=until))
    assert list(errors) == ["valid_until"]
    make_rule(valid_from=T0, valid_until=T0 + timedelta(seconds=1)).full_clean()


@pytest.mark.django_db
def test_the_database_refuses_an_inverted_window_too():
    with pytest.raises(IntegrityError), transaction.atomic():
        make_rule(valid_from=T0, valid_until=T0 - timedelta(days=1)).save()


@pytest.mark.django_db
def test_codes_are_unique_slugs():
    make_rule().save()
    assert "code" in field_errors(make_rule())
    assert "code" in field_errors(make_rule(code="not a slug"))


# --- RewardLine validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"target": "upline(actor"}, "target"),
        ({"target": "context._private_id"}, "target"),
        ({"target": "open('x')"}, "target"),
        ({"target": ""}, "target"),
        ({"amount": "floor(context.amount *"}, "amount"),
        ({"amount": "context.amount ** 2"}, "amount"),
        ({"amount": ""}, "amount"),
        ({"reward_type": "cash"}, "reward_type"),
        ({"lock_condition": "gold"}, "lock_condition"),
        ({"max_per_target": 0}, "max_per_target"),
        ({"params": ["a"]}, "params"),
        ({"reward_type": "nft", "params": {}}, "params"),
        ({"reward_type": "nft", "params": {"badge_type": ""}}, "params"),
    ],
)
def test_a_bad_line_is_refused_at_its_field(fields, field):
    errors = field_errors(make_line(**fields), exclude=["rule"])
    assert field in errors, errors


def test_an_nft_line_without_an_amount_gets_one():
    line = make_line(reward_type="nft", amount="", params={"badge_type": "quest_master_10"})
    line.full_clean(exclude=["rule"])
    assert line.amount == "1"


def test_a_valid_line_passes_full_clean():
    make_line(
        target="upline(actor, 2)",
        amount="floor(context.amount * 5 / 100)",
        lock_condition="vip_or_pro",
        max_per_target=1,
    ).full_clean(exclude=["rule"])


# --- lock_satisfied -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lock", "vip", "pro", "expected"),
    [
        ("", False, False, True),
        ("vip_or_pro", False, False, False),
        ("vip_or_pro", True, False, True),
        ("vip_or_pro", False, True, True),
        ("vip", False, True, False),
        ("vip", True, False, True),
        ("pro", True, False, False),
        ("pro", False, True, True),
    ],
)
def test_lock_satisfied(lock, vip, pro, expected):
    assert lock_satisfied(lock, ProfileView(user_id="u", is_vip=vip, is_pro=pro)) is expected


def test_an_unknown_user_meets_no_named_lock_and_unknown_locks_are_errors():
    assert lock_satisfied("", None) is True
    assert lock_satisfied("vip_or_pro", None) is False
    with pytest.raises(ValueError):
        lock_satisfied("gold", ProfileView(user_id="u", is_vip=True))


# --- history and versions -------------------------------------------------------------------


@pytest.mark.django_db
def test_versions_are_unique_per_rule():
    rule, _ = rule_save_from_dict(data=_rule_dict())
    with pytest.raises(IntegrityError), transaction.atomic():
        RuleVersion.objects.create(rule=rule, version=1, snapshot={})


@pytest.mark.django_db
def test_rule_version_get_returns_the_snapshot_of_that_version():
    rule, _ = rule_save_from_dict(data=_rule_dict())
    rule_save_from_dict(data=_rule_dict(priority=5))

    assert rule_version_get(rule_id=rule.pk, version=1).snapshot["priority"] == 100
    assert rule_version_get(rule_id=rule.pk, version=2).snapshot["priority"] == 5
    assert rule_version_get(rule_id=rule.pk, version=3) is None


@pytest.mark.django_db
def test_line_history_is_kept():
    rule, _ = rule_save_from_dict(data=_rule_dict())
    line = rule.rewards.get()
    rule_save_from_dict(data=_rule_dict(amount="12"))

    assert list(line.history.values_list("amount", flat=True)) == ["12", "10"]


# --- the selector ---------------------------------------------------------------------------


def _rule_dict(code="quest_rule", *, event_type="quest.completed", priority=100, is_active=True, amount="10", lines=1):
    return {
        "code": code,
        "name": code,
        "event_type": event_type,
        "priority": priority,
        "is_active": is_active,
        "rewards": [{"target": "actor", "reward_type": "points", "amount": amount} for _ in range(lines)],
    }


@pytest.mark.django_db
def test_rules_for_event_type_returns_active_rules_of_that_type_in_order():
    rule_save_from_dict(data=_rule_dict("b_late", priority=200))
    rule_save_from_dict(data=_rule_dict("z_early", priority=10))
    rule_save_from_dict(data=_rule_dict("a_mid", priority=100, lines=3))
    rule_save_from_dict(data=_rule_dict("off", is_active=False))
    rule_save_from_dict(data=_rule_dict("other", event_type="voucher.premium_purchased"))

    rules = rules_for_event_type("quest.completed")

    assert [r.code for r in rules] == ["z_early", "a_mid", "b_late"]
    assert [line.position for line in rules[1].rewards.all()] == [1, 2, 3]


@pytest.mark.django_db
def test_rules_for_event_type_uses_two_queries_whatever_other_types_hold(django_assert_num_queries):
    for number in range(3):
        rule_save_from_dict(data=_rule_dict(f"quest_{number}", lines=2))

    with django_assert_num_queries(2):
        rules = rules_for_event_type("quest.completed")
        assert sum(len(r.rewards.all()) for r in rules) == 6

    for number in range(30):
        rule_save_from_dict(data=_rule_dict(f"other_{number}", event_type=f"other.type_{number % 5}", lines=2))

    with django_assert_num_queries(2) as captured:
        rules = rules_for_event_type("quest.completed")
        assert [len(r.rewards.all()) for r in rules] == [2, 2, 2]
    assert "quest.completed" in captured.captured_queries[0]["sql"]


# --- the admin editor -----------------------------------------------------------------------


def _admin_post(rule=None, **overrides) -> dict:
    data = {
        "code": "admin_rule",
        "name": "Admin rule",
        "description": "",
        "event_type": "quest.completed",
        "condition": "context.level == 1",
        "priority": "100",
        "is_active": "on",
        "valid_from_0": "",
        "valid_from_1": "",
        "valid_until_0": "",
        "valid_until_1": "",
        "rewards-TOTAL_FORMS": "1",
        "rewards-INITIAL_FORMS": "0",
        "rewards-MIN_NUM_FORMS": "1",
        "rewards-MAX_NUM_FORMS": "1000",
        "rewards-0-position": "1",
        "rewards-0-target": "actor",
        "rewards-0-reward_type": "points",
        "rewards-0-amount": "10",
        "rewards-0-params": "{}",
        "rewards-0-lock_condition": "",
        "rewards-0-max_per_target": "",
    }
    if rule is not None:
        line = rule.rewards.get()
        data.update({"rewards-INITIAL_FORMS": "1", "rewards-0-id": str(line.pk), "rewards-0-rule": str(rule.pk)})
    data.update(overrides)
    return data


@pytest.fixture
def admin_client_logged_in(client, db):
    user = get_user_model().objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(user)
    return client, user


def test_admin_shows_expression_errors_at_their_fields(admin_client_logged_in):
    client, _ = admin_client_logged_in

    response = client.post(
        reverse("admin:rules_rule_add"),
        _admin_post(
            **{"condition": "context.level ==", "rewards-0-amount": "floor(", "rewards-0-target": "context._x"}
        ),
    )

    assert response.status_code == 200
    assert Rule.objects.count() == 0
    assert "condition" in response.context["adminform"].form.errors
    (inline,) = response.context["inline_admin_formsets"]
    line_errors = inline.formset.forms[0].errors
    assert {"amount", "target"} <= set(line_errors)


def test_admin_refuses_a_rule_without_lines(admin_client_logged_in):
    client, _ = admin_client_logged_in
    data = _admin_post(**{"rewards-TOTAL_FORMS": "0"})

    response = client.post(reverse("admin:rules_rule_add"), data)

    assert response.status_code == 200
    assert Rule.objects.count() == 0


def test_admin_saves_record_versions_with_the_editor(admin_client_logged_in):
    client, user = admin_client_logged_in

    response = client.post(reverse("admin:rules_rule_add"), _admin_post())
    assert response.status_code == 302
    rule = Rule.objects.get(code="admin_rule")
    assert rule.version == 1
    assert list(rule.versions.values_list("version", "created_by")) == [(1, user.pk)]

    change_url = reverse("admin:rules_rule_change", args=[rule.pk])
    assert client.post(change_url, _admin_post(rule)).status_code == 302
    rule.refresh_from_db()
    assert rule.version == 1, "saving without a change records no version"

    assert client.post(change_url, _admin_post(rule, **{"rewards-0-amount": "25"})).status_code == 302
    rule.refresh_from_db()
    assert rule.version == 2
    latest = rule.versions.get(version=2)
    assert latest.snapshot["rewards"][0]["amount"] == "25"
    assert latest.created_by == user
    assert rule.history.first().history_user == user


def test_admin_pages_render(admin_client_logged_in):
    client, _ = admin_client_logged_in
    rule, _ = rule_save_from_dict(data=_rule_dict())
    version = rule.versions.get()

    for url in (
        reverse("admin:rules_rule_changelist"),
        reverse("admin:rules_rule_changelist") + "?event_type=quest.completed&is_active__exact=1&q=quest",
        reverse("admin:rules_rule_add"),
        reverse("admin:rules_rule_change", args=[rule.pk]),
        reverse("admin:rules_rule_history", args=[rule.pk]),
        reverse("admin:rules_ruleversion_changelist"),
        reverse("admin:rules_ruleversion_changelist") + f"?rule__id__exact={rule.pk}",
        reverse("admin:rules_ruleversion_change", args=[version.pk]),
        reverse("admin:rules_rule_import"),
    ):
        assert client.get(url).status_code == 200, url


def test_admin_export_and_import(admin_client_logged_in):
    client, user = admin_client_logged_in
    rule_save_from_dict(data=_rule_dict())

    exported = client.get(reverse("admin:rules_rule_export"))
    assert exported.status_code == 200
    assert exported["Content-Disposition"].startswith("attachment;")
    payload = exported.json()
    assert [r["code"] for r in payload["rules"]] == ["quest_rule"]

    payload["rules"][0]["priority"] = 7
    upload = SimpleUploadedFile("rules.json", json.dumps(payload).encode(), "application/json")
    response = client.post(reverse("admin:rules_rule_import"), {"file": upload})
    assert response.status_code == 200
    assert "replaced   quest_rule (version 2)" in response.content.decode()
    rule = Rule.objects.get(code="quest_rule")
    assert (rule.priority, rule.version) == (7, 2)
    assert rule.versions.get(version=2).created_by == user

    payload["rules"][0]["condition"] = "context.x =="
    upload = SimpleUploadedFile("rules.json", json.dumps(payload).encode(), "application/json")
    response = client.post(reverse("admin:rules_rule_import"), {"file": upload})
    assert "refused    quest_rule" in response.content.decode()
    assert Rule.objects.get(code="quest_rule").version == 2

    action = client.post(
        reverse("admin:rules_rule_changelist"), {"action": "export_selected", "_selected_action": [rule.pk]}
    )
    assert action.status_code == 200
    assert action.json()["rules"][0]["priority"] == 7
