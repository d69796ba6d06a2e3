"""Restoring a rule version from its history (SPEC §6): the rule *and* its lines, as a new version."""

import pytest
from django.urls import reverse

from connect.models import RewardAction
from rules.models import Rule, RuleVersion
from rules.services import rule_save_from_dict

from .conftest import rule_data

pytestmark = pytest.mark.django_db

V1_LINES = [
    {"target": "actor", "reward_type": "points", "amount": "10"},
    {"target": "primary_subject", "reward_type": "points", "amount": "3", "params": {"expires_in_days": 30}},
]
V2_LINES = [{"target": "actor", "reward_type": "points", "amount": "99"}]


@pytest.fixture
def edited_rule(db):
    rule_save_from_dict(data=rule_data("quest_rule", "quest.completed", V1_LINES, name="First"))
    rule, status = rule_save_from_dict(data=rule_data("quest_rule", "quest.completed", V2_LINES, name="Second"))
    assert (status, rule.version) == ("replaced", 2)
    return rule


def restore(client, rule: Rule, version: int):
    return client.post(reverse("admin:rules_rule_restore", args=[rule.pk, version]))


def test_restore_brings_back_the_lines_as_a_new_version_and_events_cite_its_snapshot(edited_rule, login, ingest):
    paid_at_v2 = ingest("quest.completed", "ann", "bob")
    client = login("rule_editor")

    response = restore(client, edited_rule, 1)

    assert response.status_code == 302
    assert response["Location"] == reverse("admin:rules_rule_history", args=[edited_rule.pk])
    rule = Rule.objects.get(pk=edited_rule.pk)
    assert (rule.name, rule.version) == ("First", 3)  # a version number never goes back
    lines = list(rule.rewards.order_by("position").values_list("target", "amount", "params"))
    assert lines == [("actor", "10", {}), ("primary_subject", "3", {"expires_in_days": 30})]
    v1, v3 = (RuleVersion.objects.get(rule=rule, version=number) for number in (1, 3))
    assert v3.snapshot == v1.snapshot and v3.created_by.username == "rule_editor"
    assert rule.history.first().history_user.username == "rule_editor"

    event = ingest("quest.completed", "ann", "bob")
    actions = list(RewardAction.objects.filter(event=event).order_by("amount"))
    assert [(a.target_user_id, a.amount, a.rule_version) for a in actions] == [("bob", 3, 3), ("ann", 10, 3)]
    cited = RuleVersion.objects.get(rule=rule, version=actions[0].rule_version).snapshot
    assert [line["amount"] for line in cited["rewards"]] == ["10", "3"]
    # What was paid before the restore still cites version 2, whose snapshot is what was paid.
    old = RewardAction.objects.get(event=paid_at_v2)
    assert (old.rule_version, old.amount) == (2, 99)
    assert RuleVersion.objects.get(rule=rule, version=2).snapshot["rewards"][0]["amount"] == "99"


def test_restoring_the_current_version_changes_nothing(edited_rule, login):
    response = restore(login("rule_editor"), edited_rule, 2)
    assert response.status_code == 302
    assert Rule.objects.get(pk=edited_rule.pk).version == 2 and RuleVersion.objects.count() == 2


def test_restore_needs_a_post_and_the_change_permission(edited_rule, login):
    assert login("rule_editor").get(reverse("admin:rules_rule_restore", args=[edited_rule.pk, 1])).status_code == 403
    assert restore(login("finance"), edited_rule, 1).status_code == 403
    assert Rule.objects.get(pk=edited_rule.pk).version == 2 and RuleVersion.objects.count() == 2


def test_simple_historys_field_only_revert_is_gone(edited_rule, login):
    client = login("superuser")
    record = edited_rule.history.order_by("history_id").first()
    url = reverse("admin:rules_rule_simple_history", args=[edited_rule.pk, record.history_id])
    page = client.get(url)
    assert page.status_code == 200 and "Revert" not in page.content.decode()
    assert client.post(url, {"name": "First", "event_type": "quest.completed"}).status_code == 403
    rule = Rule.objects.get(pk=edited_rule.pk)
    assert (rule.name, rule.version, RuleVersion.objects.count()) == ("Second", 2, 2)
    history = client.get(reverse("admin:rules_rule_history", args=[edited_rule.pk])).content.decode()
    assert "Choose a date from the list below to revert" not in history
    assert "Restore this version" in history
