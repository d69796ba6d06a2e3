import copy
import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from rules.demo import DEMO_RULES_PATH
from rules.models import RewardLine, Rule, RuleVersion
from rules.services import (
    RulesImportError,
    UnknownRuleCodes,
    rule_save_from_dict,
    rules_export,
    rules_import,
)

pytestmark = pytest.mark.django_db


def demo_payload() -> dict:
    return json.loads(DEMO_RULES_PATH.read_text())


def by_code(payload: dict) -> dict:
    return {rule["code"]: rule for rule in payload["rules"]}


def state() -> dict:
    """Everything an import could change, to compare before and after."""
    return {
        "rules": Rule.objects.count(),
        "lines": RewardLine.objects.count(),
        "versions": RuleVersion.objects.count(),
        "history": Rule.history.count(),
        "rule_versions": dict(Rule.objects.values_list("code", "version")),
        "export": rules_export(),
    }


def simple_rule(code="simple", **fields) -> dict:
    data = {
        "code": code,
        "name": "Simple",
        "event_type": "quest.completed",
        "condition": "",
        "priority": 100,
        "is_active": True,
        "stop_processing": False,
        "valid_from": None,
        "valid_until": None,
        "rewards": [
            {
                "target": "actor",
                "reward_type": "points",
                "amount": "10",
                "params": {},
                "lock_condition": "",
                "max_per_target": None,
            }
        ],
    }
    data.update(fields)
    return data


# --- the demo file and round trips -------------------------------------------------------------


def test_demo_file_imports_cleanly_and_exports_exactly_as_written():
    report = rules_import(payload=demo_payload())

    assert report.written and report.ok
    assert sorted(report.created) == sorted(by_code(demo_payload()))
    assert Rule.objects.count() == 7
    assert RuleVersion.objects.filter(version=1).count() == 7
    assert by_code(rules_export()) == by_code(demo_payload())


def test_export_uses_the_spec_schema_and_field_order():
    rules_import(payload=demo_payload())

    exported = rules_export(codes=["quest_completed_rewards"])

    assert list(exported) == ["rules"]
    (rule,) = exported["rules"]
    assert list(rule) == [
        "code",
        "name",
        "event_type",
        "condition",
        "priority",
        "is_active",
        "stop_processing",
        "valid_from",
        "valid_until",
        "budget",
        "budget_period",
        "budget_policy",
        "rewards",
    ]
    assert [list(line) for line in rule["rewards"]] == [
        [
            "target",
            "reward_type",
            "amount",
            "params",
            "lock_condition",
            "max_per_target",
            "max_per_target_per_period",
            "period",
        ]
    ] * 2
    assert rule["rewards"][1]["amount"] == "floor(context.base_reward_points / 2)"


def test_round_trip_is_identical_and_bumps_no_version():
    rules_import(payload=demo_payload())
    first = rules_export()

    report = rules_import(payload=first)

    assert sorted(report.unchanged) == sorted(by_code(first)) and not report.created and not report.replaced
    assert rules_export() == first
    assert set(Rule.objects.values_list("version", flat=True)) == {1}
    assert RuleVersion.objects.count() == 7


def test_datetimes_export_as_rfc3339_and_round_trip():
    rule_save_from_dict(data=simple_rule(valid_from="2025-01-01T03:00:00+03:00", valid_until="2025-02-01T00:00:00.5Z"))

    (exported,) = rules_export()["rules"]

    assert (exported["valid_from"], exported["valid_until"]) == ("2025-01-01T00:00:00Z", "2025-02-01T00:00:00.500000Z")
    assert rules_import(payload={"rules": [exported]}).unchanged == ["simple"]


def test_a_real_change_replaces_the_rule_with_a_new_version_and_keeps_line_ids():
    rules_import(payload=demo_payload())
    rule = Rule.objects.get(code="rielt_booking_paid")
    line_ids = list(rule.rewards.values_list("id", flat=True))
    payload = rules_export()
    changed = by_code(payload)["rielt_booking_paid"]
    changed["rewards"][2]["amount"] = "35"
    changed["priority"] = 90

    report = rules_import(payload=payload)

    assert report.replaced == ["rielt_booking_paid"]
    assert len(report.unchanged) == 6
    rule.refresh_from_db()
    assert (rule.version, rule.priority) == (2, 90)
    assert list(rule.rewards.values_list("id", flat=True)) == line_ids
    assert list(rule.rewards.values_list("amount", flat=True)) == ["floor(context.amount / 100)", "20", "35", "10"]
    latest = RuleVersion.objects.get(rule=rule, version=2)
    assert latest.snapshot == changed
    assert RuleVersion.objects.get(rule=rule, version=1).snapshot == by_code(demo_payload())["rielt_booking_paid"]
    assert set(Rule.objects.exclude(pk=rule.pk).values_list("version", flat=True)) == {1}


def test_replacing_with_fewer_or_more_lines_deletes_or_adds_lines():
    rule, status = rule_save_from_dict(data=simple_rule())
    assert status == "created"
    first_line = rule.rewards.get()

    more = simple_rule()
    more["rewards"].append(
        {"target": "primary_subject", "reward_type": "nft", "amount": "1", "params": {"badge_type": "b"}}
    )
    assert rule_save_from_dict(data=more)[1] == "replaced"
    assert list(rule.rewards.values_list("id", "position")) == [(first_line.id, 1), (first_line.id + 1, 2)]

    fewer = simple_rule()
    fewer["rewards"] = [more["rewards"][1]]
    assert rule_save_from_dict(data=fewer)[1] == "replaced"
    assert list(rule.rewards.values_list("id", "reward_type")) == [(first_line.id, "nft")]
    rule.refresh_from_db()
    assert rule.version == 3
    assert list(rule.versions.values_list("version", flat=True)) == [3, 2, 1]


def test_unchanged_save_writes_no_version_and_no_history():
    rule_save_from_dict(data=simple_rule())
    history = Rule.history.count()

    _, status = rule_save_from_dict(data=simple_rule())

    assert status == "unchanged"
    assert Rule.history.count() == history
    assert RuleVersion.objects.count() == 1


def test_saves_record_who_changed_the_rule():
    editor = get_user_model().objects.create_user("editor")
    rule_save_from_dict(data=simple_rule(), user=editor)
    rule_save_from_dict(data=simple_rule(name="Renamed"), user=editor)

    rule = Rule.objects.get(code="simple")
    assert [v.created_by for v in rule.versions.all()] == [editor, editor]
    assert rule.history.first().history_user == editor
    assert rule.history.first().name == "Renamed"


def test_description_is_exported_only_when_set_and_survives_a_round_trip():
    rule_save_from_dict(data=simple_rule(description="Why this rule exists"))

    (exported,) = rules_export()["rules"]

    assert list(exported)[:3] == ["code", "name", "description"]
    assert exported["description"] == "Why this rule exists"
    assert rules_import(payload={"rules": [exported]}).unchanged == ["simple"]


def test_optional_fields_take_their_defaults():
    minimal = {
        "code": "minimal",
        "name": "Minimal",
        "event_type": "quest.completed",
        "rewards": [{"target": "actor", "reward_type": "nft", "params": {"badge_type": "b"}}],
    }

    rules_import(payload={"rules": [minimal]})

    (exported,) = rules_export()["rules"]
    assert exported["condition"] == "" and exported["priority"] == 100 and exported["is_active"] is True
    assert (exported["budget"], exported["budget_period"], exported["budget_policy"]) == (None, None, "partial")
    assert exported["rewards"][0] == {
        "target": "actor",
        "reward_type": "nft",
        "amount": "1",
        "params": {"badge_type": "b"},
        "lock_condition": "",
        "max_per_target": None,
        "max_per_target_per_period": None,
        "period": None,
    }


def test_saving_the_same_json_form_again_records_no_version():
    rule, _ = rule_save_from_dict(data=simple_rule())
    again, status = rule_save_from_dict(data=simple_rule())
    assert (status, again.version, again.versions.count()) == ("unchanged", 1, 1)


# --- refusals: all or nothing -----------------------------------------------------------------


def test_one_bad_rule_refuses_the_whole_import_and_changes_nothing():
    rules_import(payload=demo_payload())
    before = state()
    payload = rules_export()
    by_code(payload)["quest_completed_rewards"]["priority"] = 1  # a valid change that must not be written
    payload["rules"].append(simple_rule("brand_new"))
    bad = simple_rule("bad_rule")
    bad["rewards"][0]["amount"] = "floor(context.amount *"
    payload["rules"].insert(2, bad)

    with pytest.raises(RulesImportError) as refused:
        rules_import(payload=payload)

    assert state() == before
    report = refused.value.report
    assert not report.written
    assert report.refused == ["bad_rule"]
    (item,) = [i for i in report.items if i.code == "bad_rule"]
    assert item.index == 3
    assert any(reason.startswith("rewards[1].amount:") for reason in item.reasons)
    assert report.replaced == ["quest_completed_rewards"]
    assert report.created == ["brand_new"]


def test_duplicate_codes_in_a_file_are_refused():
    payload = {"rules": [simple_rule("twice"), simple_rule("once"), simple_rule("twice", name="Other")]}

    with pytest.raises(RulesImportError) as refused:
        rules_import(payload=payload)

    report = refused.value.report
    assert report.refused == ["twice", "twice"]
    assert all(
        "duplicate in this file (rules 1, 3)" in item.reasons[0] for item in report.items if item.code == "twice"
    )
    assert Rule.objects.count() == 0


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"rule": []},
        {"rules": {}},
        {"rules": [], "extra": 1},
        "rules",
    ],
)
def test_a_file_of_the_wrong_shape_is_refused(payload):
    with pytest.raises(RulesImportError) as refused:
        rules_import(payload=payload)
    assert refused.value.report.errors


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"priority": "10"}, "priority: must be an integer."),
        ({"priority": True}, "priority: must be an integer."),
        ({"is_active": "yes"}, "is_active: must be true or false."),
        ({"stop_processing": None}, "stop_processing: must be true or false."),
        ({"code": "Not a slug!"}, "code: "),
        ({"code": 12}, "code: must be a string."),
        ({"name": ""}, "name: "),
        ({"event_type": "Quest"}, "event_type: "),
        ({"condition": "context._secret == 1"}, "condition: "),
        ({"condition": None}, "condition: must be a string."),
        ({"valid_from": "2025-01-01"}, "valid_from: must be null or an RFC 3339"),
        ({"valid_from": "2025-13-01T00:00:00Z"}, "valid_from: "),
        ({"valid_from": "2025-01-02T00:00:00Z", "valid_until": "2025-01-01T00:00:00Z"}, "valid_until: "),
        ({"rewards": []}, "rewards: must be a non-empty list"),
        ({"rewards": "actor"}, "rewards: must be a non-empty list"),
        ({"colour": "red"}, "unknown field(s): colour."),
    ],
)
def test_every_rule_field_is_validated(change, expected):
    data = simple_rule()
    data.update(change)

    with pytest.raises(RulesImportError) as refused:
        rules_import(payload={"rules": [data]})

    (item,) = refused.value.report.items
    assert any(reason.startswith(expected) for reason in item.reasons), item.reasons


def test_missing_required_fields_are_named():
    with pytest.raises(RulesImportError) as refused:
        rules_import(payload={"rules": [{"code": "x"}, "not an object"]})

    first, second = refused.value.report.items
    assert {"name: required.", "event_type: required.", "rewards: required."} <= set(first.reasons)
    assert (second.code, second.reasons) == ("<rule 2>", ["must be a JSON object."])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"target": ""}, "rewards[1].target: "),
        ({"target": "upline(actor"}, "rewards[1].target: "),
        ({"target": "context._hidden"}, "rewards[1].target: "),
        ({"amount": "10 +"}, "rewards[1].amount: "),
        ({"amount": ""}, "rewards[1].amount: "),
        ({"amount": 10}, "rewards[1].amount: must be a string."),
        ({"reward_type": "cash"}, "rewards[1].reward_type: "),
        ({"params": []}, "rewards[1].params: must be a JSON object."),
        ({"lock_condition": "gold"}, "rewards[1].lock_condition: "),
        ({"max_per_target": 0}, "rewards[1].max_per_target: "),
        ({"max_per_target": 1.5}, "rewards[1].max_per_target: "),
        ({"reward_type": "nft"}, "rewards[1].params: "),
        ({"size": 1}, "rewards[1]: unknown field(s): size."),
    ],
)
def test_every_line_field_is_validated(change, expected):
    data = simple_rule()
    data["rewards"][0].update(change)

    with pytest.raises(RulesImportError) as refused:
        rules_import(payload={"rules": [data]})

    (item,) = refused.value.report.items
    assert any(reason.startswith(expected) for reason in item.reasons), item.reasons


def test_rule_save_from_dict_refuses_invalid_data_and_writes_nothing():
    data = simple_rule(condition="context.level ==")

    with pytest.raises(ValidationError) as refused:
        rule_save_from_dict(data=data)

    assert any(message.startswith("condition:") for message in refused.value.messages)
    assert Rule.objects.count() == 0


def test_dry_run_reports_and_writes_nothing():
    rule_save_from_dict(data=simple_rule("simple"))
    before = state()
    payload = {"rules": [simple_rule("simple", priority=5), simple_rule("other")]}

    report = rules_import(payload=payload, dry_run=True)

    assert state() == before
    assert not report.written and report.dry_run
    assert [(i.code, i.status.value, i.version) for i in report.items] == [
        ("simple", "replaced", 2),
        ("other", "created", 1),
    ]


def test_export_of_unknown_codes_is_refused():
    rule_save_from_dict(data=simple_rule("known"))

    with pytest.raises(UnknownRuleCodes) as missing:
        rules_export(codes=["known", "nope"])

    assert missing.value.codes == ["nope"]


# --- the commands -------------------------------------------------------------------------------


def test_export_command_prints_the_rules_file():
    rules_import(payload=demo_payload())
    out = StringIO()

    call_command("export_rules", "--code", "quest_master_badge", "rf_partner_review_created", stdout=out)

    assert json.loads(out.getvalue()) == rules_export(codes=["quest_master_badge", "rf_partner_review_created"])
    assert sorted(r["code"] for r in json.loads(out.getvalue())["rules"]) == [
        "quest_master_badge",
        "rf_partner_review_created",
    ]
    with pytest.raises(CommandError, match="nope"):
        call_command("export_rules", "--code", "nope", stdout=StringIO())


def test_import_command_reports_what_it_did(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(demo_payload()))
    out = StringIO()

    call_command("import_rules", str(path), stdout=out)

    lines = out.getvalue().splitlines()
    assert "created    quest_master_badge (version 1)" in lines
    assert lines[-1] == "Imported 7 rule(s): 7 created, 0 replaced, 0 unchanged, 0 refused."

    payload = demo_payload()
    payload["rules"][0]["priority"] = 1
    path.write_text(json.dumps(payload))
    out = StringIO()
    call_command("import_rules", str(path), "--dry-run", stdout=out)
    assert "replaced   referral_first_level_registration (version 2)" in out.getvalue()
    assert "Dry run, nothing written: 0 created, 1 replaced, 6 unchanged, 0 refused." in out.getvalue()
    assert Rule.objects.get(code="referral_first_level_registration").version == 1


def test_import_command_refuses_with_reasons(tmp_path):
    payload = demo_payload()
    payload["rules"][1]["condition"] = "context.level = 2"
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(payload))
    err = StringIO()

    with pytest.raises(CommandError, match="nothing was written"):
        call_command("import_rules", str(path), stdout=StringIO(), stderr=err)

    assert "refused    referral_second_level_deferred" in err.getvalue()
    assert "    condition: " in err.getvalue()
    assert Rule.objects.count() == 0

    path.write_text("{not json")
    with pytest.raises(CommandError, match="not valid JSON"):
        call_command("import_rules", str(path), stdout=StringIO())
    with pytest.raises(CommandError, match="Cannot read"):
        call_command("import_rules", str(tmp_path / "missing.json"), stdout=StringIO())


@pytest.mark.django_db(transaction=True)
def test_commands_exit_codes_from_the_command_line(tmp_path):
    """The real entry point: exit 0 on success, non-zero with nothing written on a refusal."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings_test"}
    db = connection.settings_dict
    env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]

    def run(*args):
        return subprocess.run([*manage, *args], env=env, capture_output=True, text=True, timeout=120)

    bad = demo_payload()
    bad["rules"][0]["rewards"][0]["reward_type"] = "cash"
    bad_path = tmp_path / "bad.json"
    bad_path.write_text(json.dumps(bad))
    refused = run("import_rules", str(bad_path))
    assert refused.returncode == 1, refused.stderr
    assert "refused    referral_first_level_registration" in refused.stderr
    assert Rule.objects.count() == 0

    imported = run("import_rules", str(DEMO_RULES_PATH))
    assert imported.returncode == 0, imported.stderr
    assert Rule.objects.count() == 7

    exported = run("export_rules")
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout) == rules_export()


def test_report_codes_keep_file_order():
    payload = {"rules": [simple_rule("b"), simple_rule("a")]}
    report = rules_import(payload=copy.deepcopy(payload))
    assert [item.code for item in report.items] == ["b", "a"]
    assert [item.index for item in report.items] == [1, 2]
