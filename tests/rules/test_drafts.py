"""Rule drafts and approval (SPEC §15): a draft applies to no event until it is published."""

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from connect.models import RewardAction
from connect.services import event_ingest
from rules.drafts import DraftRefused, draft_approve, draft_create, draft_publish, draft_update
from rules.models import Rule, RuleDraft, RuleVersion
from rules.selectors import rules_cache_clear
from rules.services import rule_as_dict, rule_save_from_dict

pytestmark = pytest.mark.django_db


def _rule(amount="10") -> dict:
    return {
        "code": "bonus",
        "name": "Bonus",
        "event_type": "shop.bought",
        "rewards": [{"target": "actor", "reward_type": "points", "amount": amount}],
    }


@pytest.fixture
def editors():
    users = get_user_model().objects
    return users.create_user("ann", password="x"), users.create_user("bob", password="x")


def _paid(n: int) -> list[int]:
    data = {"external_id": f"e-{n}", "event_type": "shop.bought", "actor_user_id": "alice", "context": {}}
    result = event_ingest(client_name="shop", data=data)
    return [action.amount for action in result.actions]


@pytest.mark.parametrize("cache_seconds", [0, 60])
def test_a_draft_applies_to_no_event_until_published(settings, editors, cache_seconds):
    settings.RULES_CACHE_SECONDS = cache_seconds
    rules_cache_clear()
    ann, _ = editors
    rule_save_from_dict(data=_rule("10"))
    assert _paid(1) == [10]  # with the cache on, this also caches the rule

    draft = draft_create(data=_rule("20"), author=ann)
    new_rule = draft_create(data=_rule("5") | {"code": "new_one"}, author=ann)

    assert _paid(2) == [10]
    assert Rule.objects.get(code="bonus").version == 1 and not Rule.objects.filter(code="new_one").exists()
    draft_publish(draft_id=draft.pk, user=ann)
    assert _paid(3) == [20]
    draft_publish(draft_id=new_rule.pk, user=ann)
    assert sorted(_paid(4)) == [5, 20]
    rules_cache_clear()


def test_publishing_makes_a_new_version_through_the_rule_service(editors):
    ann, _ = editors
    rule, _ = rule_save_from_dict(data=_rule("10"))
    draft = draft_create(data=rule_as_dict(rule) | {"name": "Bigger bonus"}, author=ann)

    draft, published = draft_publish(draft_id=draft.pk, user=ann)

    assert (published.version, published.name) == (2, "Bigger bonus")
    assert (draft.status, draft.published_version, draft.published_by) == ("published", 2, ann)
    assert RuleVersion.objects.get(rule=published, version=2).created_by == ann
    with pytest.raises(DraftRefused):
        draft_publish(draft_id=draft.pk, user=ann)  # once only


def test_an_invalid_draft_is_refused_when_saved():
    with pytest.raises(ValidationError):
        draft_create(data=_rule("10 +"), author=None)
    assert not RuleDraft.objects.exists()


def test_approval_is_refused_to_the_author(editors):
    ann, _ = editors
    draft = draft_create(data=_rule(), author=ann)

    with pytest.raises(DraftRefused, match="author"):
        draft_approve(draft_id=draft.pk, user=ann)

    draft.refresh_from_db()
    assert draft.approved_by is None


def test_with_approval_required_only_a_draft_another_editor_approved_is_published(settings, editors):
    settings.RULES_REQUIRE_APPROVAL = True
    ann, bob = editors
    draft = draft_create(data=_rule("30"), author=ann)

    with pytest.raises(DraftRefused, match="approve"):
        draft_publish(draft_id=draft.pk, user=ann)
    assert not Rule.objects.exists()

    draft_approve(draft_id=draft.pk, user=bob)
    draft, rule = draft_publish(draft_id=draft.pk, user=ann)

    assert (draft.author, draft.approved_by, draft.published_by) == (ann, bob, ann)
    assert rule.version == 1 and _paid(1) == [30]


def test_editing_an_approved_draft_withdraws_the_approval(settings, editors):
    settings.RULES_REQUIRE_APPROVAL = True
    ann, bob = editors
    draft = draft_create(data=_rule("30"), author=ann)
    draft_approve(draft_id=draft.pk, user=bob)

    draft_update(draft_id=draft.pk, data=_rule("3000"), user=ann)

    with pytest.raises(DraftRefused):
        draft_publish(draft_id=draft.pk, user=ann)
    assert RewardAction.objects.count() == 0


def test_in_admin_the_author_s_approval_is_refused_and_another_editor_s_accepted(client, settings, editors):
    from django.contrib.auth.models import Group

    settings.RULES_REQUIRE_APPROVAL = True
    ann, bob = editors
    for user in editors:
        user.is_staff = True
        user.save()
        user.groups.add(Group.objects.get(name="Rule editors"))
    client.force_login(ann)
    created = client.post("/admin/rules/ruledraft/add/", {"data": '{"code": "bonus", "name": "B", '
                          '"event_type": "shop.bought", "rewards": [{"target": "actor", "reward_type": "points", '
                          '"amount": "7"}]}'})  # fmt: skip
    assert created.status_code == 302
    draft = RuleDraft.objects.get()
    action = {"action": "approve_selected", "_selected_action": [draft.pk]}

    client.post("/admin/rules/ruledraft/", action)
    draft.refresh_from_db()
    assert draft.author == ann and draft.approved_by is None

    client.force_login(bob)
    client.post("/admin/rules/ruledraft/", action)
    client.post("/admin/rules/ruledraft/", {"action": "publish_selected", "_selected_action": [draft.pk]})
    draft.refresh_from_db()
    assert (draft.approved_by, draft.status, draft.published_version) == (bob, "published", 1)


def test_the_rule_history_names_the_author_and_the_approver_of_a_published_draft(client, settings, editors):
    settings.RULES_REQUIRE_APPROVAL = True
    ann, bob = editors
    draft = draft_create(data=_rule("30"), author=ann)
    draft_approve(draft_id=draft.pk, user=bob)
    _, rule = draft_publish(draft_id=draft.pk, user=bob)
    bob.is_staff = bob.is_superuser = True
    bob.save()
    client.force_login(bob)

    page = client.get(f"/admin/rules/rule/{rule.pk}/history/").content.decode()

    assert "draft by ann, approved by bob" in page
