"""``import_rules`` refuses, before writing anything, what the database could not store or what a
strict JSON reader would not take (SPEC §4, §6). A dry run reports exactly what the write would do."""

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from rules.models import Rule, RuleVersion

pytestmark = pytest.mark.django_db

RULE = {"code": "imported", "name": "Imported", "event_type": "quest.completed",
        "rewards": [{"target": "actor", "reward_type": "points", "amount": "1"}]}  # fmt: skip


def run(tmp_path, text: str, *flags):
    path = tmp_path / "rules.json"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    err = StringIO()
    with pytest.raises(CommandError) as refused:
        call_command("import_rules", str(path), *flags, stdout=StringIO(), stderr=err)
    return str(refused.value), err.getvalue()


@pytest.mark.parametrize("flags", [(), ("--dry-run",)], ids=["write", "dry-run"])
@pytest.mark.parametrize(
    "change, reason",
    [
        ({"name": "a\u0000b"}, "name: Null characters are not allowed."),
        ({"code": "x\ud800"}, "code: Surrogate characters are not allowed."),
        ({"condition": "context.x == '\ud800'"}, "condition: Surrogate characters are not allowed."),
        ({"event_type": "quest.completed\n"}, "event_type: dotted lower-case"),
        ({"rewards": [{**RULE["rewards"][0], "target": "\u0000"}]}, "rewards[1].target: Null characters"),
        ({"rewards": [{**RULE["rewards"][0], "params": {"k": ["\ud800"]}}]}, "rewards[1].params: Surrogate"),
    ],
    ids=["nul-name", "surrogate-code", "surrogate-condition", "newline-event-type", "nul-target", "surrogate-params"],
)
def test_unstorable_text_is_refused_and_nothing_written(tmp_path, flags, change, reason):
    message, err = run(tmp_path, json.dumps({"rules": [{**RULE, **change}]}), *flags)
    assert "nothing was written" in message
    assert reason in err and "0 created, 0 replaced, 0 unchanged, 1 refused" in err
    err.encode("utf-8")  # the report itself can be printed
    assert not Rule.objects.exists() and not RuleVersion.objects.exists()


@pytest.mark.parametrize(
    "text, reason",
    [
        (json.dumps({"rules": [RULE]})[:-1] + ', "rules": []}', "Duplicate key 'rules' in a JSON object."),
        ('{"rules": [' + '{"a": ' * 40 + "{}" + "}" * 40 + "]}", "JSON nested deeper than 32 levels."),
        ('{"rules": [' + "[" * 5000 + "]" * 5000 + "]}", "JSON nested deeper than 32 levels."),
    ],
    ids=["duplicate-key", "depth-42", "depth-5000"],
)
def test_a_file_a_strict_reader_refuses_is_refused(tmp_path, text, reason):
    message, _ = run(tmp_path, text)
    assert reason in message
    assert not Rule.objects.exists()
