"""Staff roles (SPEC §11): the groups, their exact permissions, and every admin page per role."""

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.management.sql import emit_post_migrate_signal
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.urls import reverse

from connect.models import RewardAction
from points import services
from points.models import Account, Entry, Hold, ServiceClient, Transaction
from points.roles import FINANCE, RULE_EDITORS, roles_sync

from .conftest import PASSWORD, ROLES

# The roles table of SPEC §11 written out independently of points.roles.
EXPECTED = {
    RULE_EDITORS: {
        "rules.add_rule", "rules.change_rule", "rules.delete_rule", "rules.view_rule",
        "rules.add_rewardline", "rules.change_rewardline", "rules.delete_rewardline", "rules.view_rewardline",
        "rules.view_ruleversion", "rules.view_historicalrule", "rules.view_historicalrewardline",
        "rules.add_ruledraft", "rules.change_ruledraft", "rules.delete_ruledraft", "rules.view_ruledraft",
        "connect.add_backtestrun", "connect.view_backtestrun",
        "connect.view_economicevent", "connect.view_rewardaction", "connect.view_userprofile",
        "connect.retry_rewardaction",
    },
    FINANCE: {
        "points.view_account", "points.view_transaction", "points.view_entry", "points.view_hold", "points.view_lot",
        "points.adjust_account",
        "connect.view_economicevent", "connect.view_rewardaction", "connect.view_userprofile",
        "connect.retry_rewardaction", "connect.cancel_rewardaction",
    },
}  # fmt: skip


def group_permissions(name: str) -> set[str]:
    group = Group.objects.get(name=name)
    return {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")}


def test_the_role_groups_have_exactly_their_permissions(db):
    assert group_permissions(RULE_EDITORS) == EXPECTED[RULE_EDITORS]
    assert group_permissions(FINANCE) == EXPECTED[FINANCE]


def test_no_role_may_write_the_ledger_or_manage_keys_users_or_groups(db):
    for role in (RULE_EDITORS, FINANCE):
        granted = group_permissions(role)
        assert not {
            p
            for p in granted
            if p.startswith("points.") and p.split(".")[1].split("_")[0] in ("add", "change", "delete")
        }
        assert not {p for p in granted if "serviceclient" in p or p.startswith("auth.")}
    assert not {p for p in group_permissions(FINANCE) if p.startswith("rules.")}
    assert not {p for p in group_permissions(RULE_EDITORS) if p.startswith("points.")}
    assert "connect.cancel_rewardaction" not in group_permissions(RULE_EDITORS)


def test_role_permissions_are_the_models_own_and_not_duplicated(db):
    from django.apps import apps

    for name in (RULE_EDITORS, FINANCE):
        for permission in Group.objects.get(name=name).permissions.select_related("content_type"):
            model = apps.get_model(permission.content_type.app_label, permission.content_type.model)
            action = permission.codename.split("_")[0]
            if (
                action in model._meta.default_permissions
                and permission.codename == f"{action}_{model._meta.model_name}"
            ):
                assert permission.name == f"Can {action} {model._meta.verbose_name_raw}"
            assert (
                Permission.objects.filter(content_type=permission.content_type, codename=permission.codename).count()
                == 1
            )


def test_groups_come_back_after_a_flush_and_edits_by_hand_are_undone(db):
    Group.objects.filter(name=RULE_EDITORS).delete()
    Permission.objects.filter(codename__in=["retry_rewardaction", "cancel_rewardaction", "adjust_account"]).delete()
    finance = Group.objects.get(name=FINANCE)
    finance.permissions.add(Permission.objects.get(codename="change_rule"))

    emit_post_migrate_signal(verbosity=0, interactive=False, db="default")

    assert group_permissions(RULE_EDITORS) == EXPECTED[RULE_EDITORS]
    assert group_permissions(FINANCE) == EXPECTED[FINANCE]
    roles_sync()  # idempotent
    assert Group.objects.filter(name__in=[RULE_EDITORS, FINANCE]).count() == 2
    assert group_permissions(FINANCE) == EXPECTED[FINANCE]


def test_the_data_migration_creates_the_groups_on_an_empty_database_state(db):
    from importlib import import_module

    migration = import_module("points.migrations.0003_staff_roles")
    historical = MigrationExecutor(connection).loader.project_state(("points", "0003_staff_roles")).apps
    Group.objects.all().delete()
    Permission.objects.filter(codename__in=["retry_rewardaction", "cancel_rewardaction", "adjust_account"]).delete()

    with connection.schema_editor() as editor:
        migration.roles_create(historical, editor)

    assert group_permissions(RULE_EDITORS) == EXPECTED[RULE_EDITORS]
    assert group_permissions(FINANCE) == EXPECTED[FINANCE]


# --- every admin page, per role ----------------------------------------------------------------

S, E, F, P = ROLES  # superuser, rule editor, finance, plain staff without a group


def codes(ok: set[str], ok_code: int = 200) -> dict[str, int]:
    return {role: ok_code if role in ok else 403 for role in ROLES}


ALL = {S, E, F, P}
RULES = {S, E}
OPERATIONS = {S, E, F}
LEDGER = {S, F}
CANCEL = {S, F}
SUPERUSER = {S}
NOBODY: set[str] = set()


@pytest.fixture
def objects(db, make_rule, ingest, django_user_model):
    rule = make_rule("page_rule", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "10"}])
    event = ingest("quest.completed", "alice")
    action = event.reward_actions.get()
    RewardAction.objects.filter(pk=action.pk).update(status=RewardAction.Status.FAILED, last_error="boom")
    services.account_credit(source="quest_service", external_id="c1", user_id="alice", amount=100)
    hold = services.hold_create(source="quest_service", external_id="h1", user_id="alice", amount=10)
    account = Account.objects.get(user_id="alice")
    client = ServiceClient.objects.create(name="some_service", scopes=["events:read"])
    someone = django_user_model.objects.create_user("someone", password=PASSWORD)
    return {
        "rule": rule,
        "version": rule.versions.get(),
        "event": event,
        "action": action,
        "account": account,
        "transaction": Transaction.objects.filter(account=account).first(),
        "entry": Entry.objects.filter(account=account).first(),
        "hold": Hold.objects.get(pk=hold.transaction.hold_id),
        "client": client,
        "user": someone,
        "group": Group.objects.get(name=FINANCE),
    }


def pages(o) -> list[tuple[str, str, str, dict[str, int]]]:
    """(label, method, url, expected status per role)."""

    def change(name, obj):
        return reverse(f"admin:{name}_change", args=[obj.pk])

    return [
        ("index", "get", reverse("admin:index"), codes(ALL)),
        # rules
        ("rule list", "get", reverse("admin:rules_rule_changelist"), codes(RULES)),
        ("rule add", "get", reverse("admin:rules_rule_add"), codes(RULES)),
        ("rule change", "get", change("rules_rule", o["rule"]), codes(RULES)),
        ("rule history", "get", reverse("admin:rules_rule_history", args=[o["rule"].pk]), codes(RULES)),
        ("rule versions", "get", reverse("admin:rules_ruleversion_changelist"), codes(RULES)),
        ("rule version", "get", change("rules_ruleversion", o["version"]), codes(RULES)),
        ("simulator", "get", "/admin/rules/rule/simulate/", codes(RULES)),
        ("rules import", "get", reverse("admin:rules_rule_import"), codes(RULES)),
        ("rules export", "get", reverse("admin:rules_rule_export"), codes(RULES)),
        # operations
        ("event list", "get", reverse("admin:connect_economicevent_changelist"), codes(OPERATIONS)),
        ("event", "get", change("connect_economicevent", o["event"]), codes(OPERATIONS)),
        ("event add", "get", reverse("admin:connect_economicevent_add"), codes(NOBODY)),
        ("action list", "get", reverse("admin:connect_rewardaction_changelist"), codes(OPERATIONS)),
        ("action", "get", change("connect_rewardaction", o["action"]), codes(OPERATIONS)),
        ("action add", "get", reverse("admin:connect_rewardaction_add"), codes(NOBODY)),
        ("profiles", "get", reverse("admin:connect_userprofile_changelist"), codes(OPERATIONS)),
        (
            "action cancel form",
            "get",
            reverse("admin:connect_rewardaction_cancel", args=[o["action"].pk]),
            codes(CANCEL),
        ),
        (
            "action retry",
            "post",
            reverse("admin:connect_rewardaction_retry", args=[o["action"].pk]),
            codes(OPERATIONS, 302),
        ),
        # ledger
        ("account list", "get", reverse("admin:points_account_changelist"), codes(LEDGER)),
        ("account", "get", change("points_account", o["account"]), codes(LEDGER)),
        ("account add", "get", reverse("admin:points_account_add"), codes(NOBODY)),
        ("transaction list", "get", reverse("admin:points_transaction_changelist"), codes(LEDGER)),
        ("transaction", "get", change("points_transaction", o["transaction"]), codes(LEDGER)),
        ("transaction add", "get", reverse("admin:points_transaction_add"), codes(NOBODY)),
        ("entry list", "get", reverse("admin:points_entry_changelist"), codes(LEDGER)),
        ("entry", "get", change("points_entry", o["entry"]), codes(LEDGER)),
        ("entry add", "get", reverse("admin:points_entry_add"), codes(NOBODY)),
        ("hold list", "get", reverse("admin:points_hold_changelist"), codes(LEDGER)),
        ("hold", "get", change("points_hold", o["hold"]), codes(LEDGER)),
        ("statement", "get", reverse("admin:points_account_statement", args=[o["account"].pk]), codes(LEDGER)),
        ("csv export", "get", reverse("admin:points_transaction_export"), codes(LEDGER)),
        ("adjustment form", "get", reverse("admin:points_account_adjust"), codes(LEDGER)),
        ("dashboard", "get", reverse("admin:connect_dashboard"), codes(LEDGER)),
        # superuser only
        ("service clients", "get", reverse("admin:points_serviceclient_changelist"), codes(SUPERUSER)),
        ("service client add", "get", reverse("admin:points_serviceclient_add"), codes(SUPERUSER)),
        ("service client", "get", change("points_serviceclient", o["client"]), codes(SUPERUSER)),
        ("users", "get", reverse("admin:auth_user_changelist"), codes(SUPERUSER)),
        ("user add", "get", reverse("admin:auth_user_add"), codes(SUPERUSER)),
        ("user", "get", change("auth_user", o["user"]), codes(SUPERUSER)),
        ("groups", "get", reverse("admin:auth_group_changelist"), codes(SUPERUSER)),
        ("group", "get", change("auth_group", o["group"]), codes(SUPERUSER)),
    ]


@pytest.mark.parametrize("role", ROLES)
def test_every_admin_page_answers_per_the_roles_table(role, objects, client, staff):
    client.force_login(staff(role))
    wrong = []
    for label, method, url, expected in pages(objects):
        if label == "action retry":
            RewardAction.objects.filter(pk=objects["action"].pk).update(status=RewardAction.Status.FAILED)
        response = getattr(client, method)(url)
        if response.status_code != expected[role]:
            wrong.append((label, url, response.status_code, expected[role]))
    assert wrong == []


def test_anonymous_visitors_are_sent_to_the_login_page(objects, client):
    for label, method, url, _ in pages(objects):
        response = getattr(client, method)(url)
        assert response.status_code == 302, label
        assert response["Location"].startswith(reverse("admin:login")), label


def test_nobody_not_even_a_superuser_can_change_or_delete_ledger_rows(objects, login):
    client = login(S)
    for name, obj in (
        ("points_account", objects["account"]),
        ("points_transaction", objects["transaction"]),
        ("points_entry", objects["entry"]),
        ("points_hold", objects["hold"]),
    ):
        change_url = reverse(f"admin:{name}_change", args=[obj.pk])
        page = client.get(change_url)
        assert page.status_code == 200
        assert 'name="_save"' not in page.content.decode()
        assert client.post(change_url, {"amount": "1"}).status_code == 403
        assert client.post(reverse(f"admin:{name}_delete", args=[obj.pk]), {"post": "yes"}).status_code == 403
        assert client.post(reverse(f"admin:{name}_add"), {"amount": "1"}).status_code == 403
    objects["account"].refresh_from_db()
    assert (objects["account"].balance, objects["account"].held) == (100, 10)


def test_finance_sees_no_edit_button_on_rules_and_editors_cannot_post_rules_changes_as_finance(objects, login):
    client = login(F)
    response = client.post(reverse("admin:rules_rule_change", args=[objects["rule"].pk]), {"name": "changed"})
    assert response.status_code == 403
    objects["rule"].refresh_from_db()
    assert objects["rule"].name == "page rule"


def test_the_index_links_each_role_to_its_tools(objects, login):
    superuser = login(S).get(reverse("admin:index")).content.decode()
    assert reverse("admin:connect_dashboard") in superuser and "/admin/rules/rule/simulate/" in superuser

    editor = login(E).get(reverse("admin:index")).content.decode()
    assert "/admin/rules/rule/simulate/" in editor
    assert reverse("admin:connect_dashboard") not in editor
    assert reverse("admin:points_account_adjust") not in editor

    finance = login(F).get(reverse("admin:index")).content.decode()
    assert reverse("admin:connect_dashboard") in finance and reverse("admin:points_account_adjust") in finance
    assert "/admin/rules/rule/simulate/" not in finance


# --- login protection ----------------------------------------------------------------------------


def test_repeated_wrong_passwords_lock_the_login(db, client, staff, settings):
    settings.AXES_ENABLED = True
    user = staff(F)
    login_url = reverse("admin:login")

    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        response = client.post(login_url, {"username": user.username, "password": "wrong", "next": "/admin/"})
        assert response.status_code == 200  # the form again, with an error
    last_try = client.post(login_url, {"username": user.username, "password": "wrong", "next": "/admin/"})
    assert last_try.status_code == 429

    locked = client.post(login_url, {"username": user.username, "password": PASSWORD, "next": "/admin/"})
    assert locked.status_code == 429
    assert "_auth_user_id" not in client.session
    assert client.get(reverse("admin:index")).status_code == 302


def test_a_correct_password_before_the_limit_logs_in(db, client, staff, settings):
    settings.AXES_ENABLED = True
    user = staff(F)
    login_url = reverse("admin:login")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        client.post(login_url, {"username": user.username, "password": "wrong"})

    response = client.post(login_url, {"username": user.username, "password": PASSWORD, "next": "/admin/"})
    assert response.status_code == 302
    assert client.get(reverse("admin:index")).status_code == 200
