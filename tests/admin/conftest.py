"""Staff users of each role (SPEC §11) and small data builders for the admin tests."""

import pytest
from django.contrib.auth.models import Group

from points.roles import FINANCE, RULE_EDITORS

PASSWORD = "correct-horse-battery-staple"
ROLES = ("superuser", "rule_editor", "finance", "plain_staff")


def make_staff(django_user_model, role: str):
    if role == "superuser":
        return django_user_model.objects.create_superuser(role, f"{role}@example.com", PASSWORD)
    user = django_user_model.objects.create_user(role, f"{role}@example.com", PASSWORD, is_staff=True)
    group = {"rule_editor": RULE_EDITORS, "finance": FINANCE}.get(role)
    if group:
        user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def staff(db, django_user_model):
    """``staff(role)`` → a user of that role (created once per test)."""
    made = {}

    def get(role: str):
        if role not in made:
            made[role] = make_staff(django_user_model, role)
        return made[role]

    return get


@pytest.fixture
def login(client, staff):
    """``login(role)`` → the test client logged in as that role."""

    def as_role(role: str):
        client.force_login(staff(role))
        return client

    return as_role


def rule_data(code: str, event_type: str, rewards: list[dict], **fields) -> dict:
    return {
        "code": code, "name": code.replace("_", " "), "event_type": event_type, "condition": "", "priority": 100,
        "is_active": True, "stop_processing": False, "valid_from": None, "valid_until": None,
        **fields,
        "rewards": [{"params": {}, "lock_condition": "", "max_per_target": None, **reward} for reward in rewards],
    }  # fmt: skip


@pytest.fixture
def make_rule(db):
    from rules.services import rule_save_from_dict

    def make(code: str, event_type: str, rewards: list[dict], **fields):
        rule, _ = rule_save_from_dict(data=rule_data(code, event_type, rewards, **fields))
        return rule

    return make


@pytest.fixture
def ingest(db):
    """``ingest(event_type, actor, subject=None, context=None, external_id=None)`` → the stored event."""
    import itertools

    from connect.services import event_ingest

    numbers = itertools.count(1)

    def post(event_type: str, actor: str, subject: str | None = None, context: dict | None = None, **extra):
        data = {
            "external_id": extra.pop("external_id", None) or f"ev-{next(numbers)}",
            "event_type": event_type,
            "actor_user_id": actor,
            "primary_subject_user_id": subject,
            "context": context or {},
            "occurred_at": None,
            **extra,
        }
        return event_ingest(client_name=extra.get("source_service", "quest_service"), data=data).event

    return post
