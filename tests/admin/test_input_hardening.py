"""Admin forms refuse what the API refuses, and admin pages survive what is stored (issue: hardening).

Each case posts through the test client as staff and asserts the answer, the error shown and that
nothing was written.
"""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from points import services
from points.models import Account, ServiceClient, Transaction
from rules.models import Rule, RuleVersion

pytestmark = pytest.mark.django_db

ADD_URL = "/admin/rules/rule/add/"
SIMULATE_URL = "/admin/rules/rule/simulate/"


def deep(depth: int) -> str:
    return '{"a": ' * (depth - 1) + "{}" + "}" * (depth - 1)


def rule_post(**overrides) -> dict:
    data = {
        "code": "form_rule", "name": "Form rule", "event_type": "quest.completed", "condition": "",
        "priority": "100", "is_active": "on",
        "rewards-TOTAL_FORMS": "1", "rewards-INITIAL_FORMS": "0", "rewards-MIN_NUM_FORMS": "1",
        "rewards-MAX_NUM_FORMS": "1000", "rewards-0-position": "1", "rewards-0-target": "actor",
        "rewards-0-reward_type": "points", "rewards-0-amount": "10", "rewards-0-params": "{}",
    }  # fmt: skip
    data.update(overrides)
    return data


def inline_errors(response) -> list:
    formset = response.context["inline_admin_formsets"][0].formset
    return [*formset.non_form_errors(), *(error for form in formset.forms for error in form.errors.get("params", []))]


def test_a_rule_saved_in_the_form_has_one_history_row_and_one_version_per_change(login):
    client = login("rule_editor")
    assert client.post(ADD_URL, rule_post()).status_code == 302
    rule = Rule.objects.get(code="form_rule")
    change = reverse("admin:rules_rule_change", args=[rule.pk])
    line = rule.rewards.get()
    edit = rule_post(
        **{"rewards-INITIAL_FORMS": "1", "rewards-0-id": str(line.pk), "rewards-0-rule": str(rule.pk)},
        name="Renamed",
    )
    edit.pop("code")
    assert client.post(change, edit).status_code == 302
    assert client.post(change, edit).status_code == 302  # no change: no version, no history row

    rule.refresh_from_db()
    assert (rule.name, rule.version) == ("Renamed", 2)
    assert list(rule.versions.order_by("version").values_list("version", flat=True)) == [1, 2]
    assert rule.history.count() == 2  # one row per save that changed the rule, none empty
    assert [record.history_user.username for record in rule.history.all()] == ["rule_editor", "rule_editor"]
    page = client.get(reverse("admin:rules_rule_history", args=[rule.pk])).content.decode()
    assert page.count("Restore this version") == 1  # every version but the current one


@pytest.mark.parametrize(
    "params, message",
    [
        ('{"badge": 1, "badge": 2}', "Duplicate key 'badge' in a JSON object."),
        (deep(33), "JSON nested deeper than 32 levels."),
        (deep(1000), "JSON nested deeper than 32 levels."),
        ('{"k": "\\u0000"}', "Null characters are not allowed."),
        ('{"k": "\\ud800"}', "Surrogate characters are not allowed."),
    ],
    ids=["duplicate-key", "depth-33", "depth-1000", "nul", "lone-surrogate"],
)
def test_the_rule_form_refuses_bad_params_at_the_field(login, params, message):
    response = login("rule_editor").post(ADD_URL, rule_post(**{"rewards-0-params": params}))
    assert response.status_code == 200
    assert message in inline_errors(response)
    assert not Rule.objects.exists() and not RuleVersion.objects.exists()


@pytest.mark.parametrize("field, value", [("event_type", "quest.completed\n"), ("name", "bad\x00name")])
def test_the_rule_form_refuses_a_trailing_newline_in_event_type_and_nul_in_text(login, field, value):
    response = login("rule_editor").post(ADD_URL, rule_post(**{field: value}))
    assert response.status_code == 200
    assert list(response.context["adminform"].form.errors) == [field]
    assert not Rule.objects.exists()


@pytest.mark.parametrize(
    "event, message",
    [
        (
            '{"event_type": "quest.completed", "actor_user_id": "a", "actor_user_id": "b"}',
            "Duplicate key 'actor_user_id' in a JSON object.",
        ),
        ('{"event_type": "quest.completed", "actor_user_id": "a", "context": ' + deep(40) + "}", "deeper than 32"),
        ('{"event_type": "quest.completed", "actor_user_id": "a", "context": ' + deep(950) + "}", "deeper than 32"),
        ('{"event_type": "quest.completed", "actor_user_id": "\\ud800"}', "Surrogate characters are not allowed."),
        ('{"event_type": "quest.completed", "actor_user_id": "a", "context": {"x": "\\u0000"}}', "Null characters"),
        ('{"event_type": "quest.completed", "actor_user_id": "a/b"}', "may not contain '/'"),
        ('{"event_type": "quest.completed\\n", "actor_user_id": "a"}', "event_type"),
    ],
    ids=["duplicate-key", "depth-40", "depth-950", "surrogate", "nul", "slash-in-user-id", "newline-event-type"],
)
def test_the_simulator_refuses_bad_events_at_the_field(login, make_rule, event, message):
    make_rule("r", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "1"}])
    response = login("rule_editor").post(SIMULATE_URL, {"event": event})
    assert response.status_code == 200
    errors = response.context["form"].errors["event"]
    assert any(message in error for error in errors), errors
    assert response.context["result"] is None


def upload(client, text: str, *, dry_run: bool = True):
    file = SimpleUploadedFile("rules.json", text.encode("utf-8", "surrogatepass"), content_type="application/json")
    return client.post("/admin/rules/rule/import/", {"file": file, "dry_run": "on" if dry_run else ""})


RULE = {"code": "imported", "name": "Imported", "event_type": "quest.completed",
        "rewards": [{"target": "actor", "reward_type": "points", "amount": "1"}]}  # fmt: skip


@pytest.mark.parametrize(
    "text, message",
    [
        (json.dumps({"rules": [RULE]})[:-1] + ', "rules": []}', "Duplicate key 'rules'"),
        ('{"rules": [' + deep(40) + "]}", "deeper than 32"),
    ],
    ids=["duplicate-key", "too-deep"],
)
def test_the_import_page_refuses_a_malformed_file(login, text, message):
    response = upload(login("rule_editor"), text)
    assert response.status_code == 200
    assert any(message in error for error in response.context["form"].errors["file"])
    assert not Rule.objects.exists()


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"name": "nul\u0000"}, "name: Null characters are not allowed."),
        ({"name": "\ud800"}, "name: Surrogate characters are not allowed."),
        ({"event_type": "quest.completed\n"}, "event_type: dotted lower-case"),
        ({"rewards": [{**RULE["rewards"][0], "params": {"x": "\ud800"}}]}, "params: Surrogate characters"),
    ],
    ids=["nul-name", "surrogate-name", "newline-event-type", "surrogate-params"],
)
@pytest.mark.parametrize("dry_run", [True, False])
def test_the_import_page_refuses_text_the_database_cannot_store(login, change, reason, dry_run):
    response = upload(login("rule_editor"), json.dumps({"rules": [{**RULE, **change}]}), dry_run=dry_run)
    assert response.status_code == 200
    report = response.context["report"]
    assert report.refused == ["imported"] and report.created == []
    assert any(reason in line for line in report.lines())
    assert not Rule.objects.exists()


# --- service clients ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["connect", "staff", "system", "System", "CONNECT"])
def test_the_admin_refuses_the_ledgers_internal_names_as_client_names(login, name):
    response = login("superuser").post(
        reverse("admin:points_serviceclient_add"),
        {"name": name, "scopes": '["points:credit"]', "is_active": "on",
         "keys-TOTAL_FORMS": "0", "keys-INITIAL_FORMS": "0"},
    )  # fmt: skip
    assert response.status_code == 200
    assert "reserved for the ledger" in response.context["adminform"].form.errors["name"][0]
    assert not ServiceClient.objects.exists()


# --- ledger pages -------------------------------------------------------------------------------------------


def test_the_adjustment_form_adjusts_the_account_exactly_as_stored(login):
    services.account_credit(source="old_client", external_id="1", user_id=" bob", amount=10)
    services.account_credit(source="old_client", external_id="2", user_id="bob", amount=10)
    client = login("finance")
    form = client.get(reverse("admin:points_account_adjust"), {"user_id": " bob"})
    data = {"user_id": " bob", "direction": "credit", "amount": "5", "reason": "fix",
            "token": str(form.context["form"].initial["token"])}  # fmt: skip
    assert client.post(reverse("admin:points_account_adjust"), data).status_code == 302
    assert dict(Account.objects.filter(kind="user").values_list("user_id", "balance")) == {" bob": 15, "bob": 10}


@pytest.mark.parametrize("user_id", ["a/b", "new\tline", "trailing "])
def test_the_adjustment_form_refuses_a_new_account_with_an_invalid_user_id(login, user_id):
    client = login("finance")
    form = client.get(reverse("admin:points_account_adjust"))
    data = {"user_id": user_id, "direction": "credit", "amount": "5", "reason": "fix", "new_account": "on",
            "token": str(form.context["form"].initial["token"])}  # fmt: skip
    response = client.post(reverse("admin:points_account_adjust"), data)
    assert response.status_code == 200 and list(response.context["form"].errors) == ["user_id"]
    assert not Account.objects.filter(kind="user").exists() and not Transaction.objects.exists()


def test_system_accounts_show_the_sum_of_their_entries(login):
    services.account_credit(source="shop", external_id="1", user_id="ann", amount=1212)
    services.account_debit(source="shop", external_id="2", user_id="ann", amount=160)
    response = login("finance").get(reverse("admin:points_account_changelist"))
    shown = {str(account): account.shown_balance for account in response.context["cl"].result_list}
    assert shown["ann"] == 1052
    system = {name: value for name, value in shown.items() if name.startswith("[")}
    assert sorted(value for value in system.values() if value) == [-1212, 160]  # issued, spent; the rest 0
    assert sum(shown.values()) == 0  # every posting sums to zero across accounts
    html = response.content.decode()
    assert '<td class="field-balance_shown">-1212</td>' in html and '<td class="field-balance_shown">160</td>' in html


def test_pages_of_json_stored_deeper_than_the_limit_still_render(login, ingest, make_rule):
    nested: dict = {}
    for _ in range(900):
        nested = {"a": nested}
    result = services.account_credit(source="old", external_id="deep", user_id="ann", amount=1, metadata=nested)
    make_rule("pays", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "1"}])
    event = ingest("quest.completed", "ann")
    type(event).objects.filter(pk=event.pk).update(context=nested)
    action = event.reward_actions.get()
    client = login("superuser")
    account = Account.objects.get(user_id="ann")
    for listing in (
        reverse("admin:points_account_statement", args=[account.pk]),
        reverse("admin:points_transaction_changelist"),
        reverse("admin:points_entry_changelist"),
        reverse("admin:connect_economicevent_changelist"),
        reverse("admin:connect_rewardaction_changelist"),
        reverse("admin:connect_rewardaction_change", args=[action.pk]),
    ):
        assert client.get(listing).status_code == 200, listing
    for url in (
        reverse("admin:points_transaction_change", args=[result.transaction.pk]),
        reverse("admin:connect_economicevent_change", args=[event.pk]),
        reverse("admin:points_transaction_export"),
    ):
        response = client.get(url)
        body = b"".join(response.streaming_content) if response.streaming else response.content
        assert response.status_code == 200, url
        assert b"not shown: nested deeper than 64 levels" in body


@pytest.mark.parametrize(
    "scopes, message",
    [
        ('["points:credit", ' + "[" * 1000 + "]" * 1000 + "]", "deeper than 32"),
        ('{"a": 1, "a": 2}', "Duplicate key 'a'"),
        ('["\\ud800"]', "Surrogate characters are not allowed."),
    ],
    ids=["depth-1000", "duplicate-key", "lone-surrogate"],
)
def test_the_service_client_form_reads_scopes_strictly(login, scopes, message):
    response = login("superuser").post(
        reverse("admin:points_serviceclient_add"),
        {
            "name": "quest_service",
            "scopes": scopes,
            "is_active": "on",
            "keys-TOTAL_FORMS": "0",
            "keys-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 200
    assert any(message in error for error in response.context["adminform"].form.errors["scopes"])
    assert not ServiceClient.objects.exists()
