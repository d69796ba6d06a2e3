"""Operations admin: events, reward actions (retry, cancel with a reason), channel warnings, version links."""

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from connect.models import EconomicEvent, RewardAction
from points.models import Account

pytestmark = pytest.mark.django_db

Status = RewardAction.Status


@pytest.fixture
def quest_rules(make_rule):
    return make_rule(
        "quest_rule",
        "quest.completed",
        [
            {"target": "actor", "reward_type": "points", "amount": "context.points"},
            {"target": "primary_subject", "reward_type": "points", "amount": "5", "lock_condition": "vip"},
        ],
    )


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def changelist_ids(response) -> set:
    return {obj.pk for obj in response.context["cl"].result_list}


# --- events ----------------------------------------------------------------------------------


def test_events_are_searched_by_external_id_and_user_and_filtered(quest_rules, ingest, login):
    first = ingest("quest.completed", "alice", "bob", {"points": 10}, external_id="quest-1")
    second = ingest("quest.completed", "carol", None, {"points": 3}, external_id="quest-2")
    ignored = ingest("referral.joined", "erin", "alice", external_id="ref-1")
    client = login("rule_editor")
    url = reverse("admin:connect_economicevent_changelist")

    assert changelist_ids(client.get(url, {"q": "quest-2"})) == {second.pk}
    assert changelist_ids(client.get(url, {"q": "alice"})) == {first.pk, ignored.pk}
    assert changelist_ids(client.get(url, {"q": "bob"})) == {first.pk}
    assert changelist_ids(client.get(url, {"status__exact": "ignored"})) == {ignored.pk}
    assert changelist_ids(client.get(url, {"event_type": "quest.completed"})) == {first.pk, second.pk}
    assert changelist_ids(client.get(url, {"source_service": "quest_service"})) == {first.pk, second.pk, ignored.pk}
    EconomicEvent.objects.filter(pk=first.pk).update(received_at="2020-01-02T10:00:00Z")
    assert changelist_ids(client.get(url, {"received_from": "2020-01-01", "received_to": "2020-01-02"})) == {first.pk}


def test_an_event_page_shows_the_payload_as_json_and_its_actions_read_only(quest_rules, ingest, login):
    event = ingest("quest.completed", "alice", "bob", {"points": 10, "quest": {"id": "q<1>"}})

    response = login("finance").get(reverse("admin:connect_economicevent_change", args=[event.pk]))

    html = response.content.decode()
    assert '<pre class="json">' in html
    assert "\n    &quot;quest&quot;: {\n      &quot;id&quot;: &quot;q&lt;1&gt;&quot;\n" in html  # indented, escaped
    for action in event.reward_actions.all():
        assert reverse("admin:connect_rewardaction_change", args=[action.pk]) in html
    assert 'name="_save"' not in html  # read-only: events come from the API only


# --- reward actions ------------------------------------------------------------------------------


def test_reward_actions_are_filtered_and_searched_by_target(quest_rules, ingest, login):
    event = ingest("quest.completed", "alice", "bob", {"points": 10})
    ingest("quest.completed", "carol", None, {"points": 4})
    client = login("finance")
    url = reverse("admin:connect_rewardaction_changelist")
    locked = RewardAction.objects.get(status=Status.LOCKED)

    assert changelist_ids(client.get(url, {"q": "bob"})) == {locked.pk}
    assert changelist_ids(client.get(url, {"status__exact": "locked"})) == {locked.pk}
    assert len(changelist_ids(client.get(url, {"rule__id__exact": quest_rules.pk}))) == 3
    assert len(changelist_ids(client.get(url, {"reward_type__exact": "nft"}))) == 0
    assert changelist_ids(client.get(url, {"event__id__exact": str(event.pk)})) == set(
        event.reward_actions.values_list("pk", flat=True)
    )


def test_retrying_a_failed_action_goes_through_the_dispatcher_and_pays(
    quest_rules, ingest, login, django_capture_on_commit_callbacks
):
    event = ingest("quest.completed", "alice", None, {"points": 10})
    action = event.reward_actions.get(target_user_id="alice")
    RewardAction.objects.filter(pk=action.pk).update(status=Status.FAILED, last_error="ledger down")
    client = login("rule_editor")

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("admin:connect_rewardaction_changelist"),
            {"action": "retry_failed", "_selected_action": [str(action.pk)]},
            follow=True,
        )

    action.refresh_from_db()
    assert action.status == Status.COMPLETED
    assert Account.objects.get(user_id="alice").balance == 10
    assert any("Retried 1 failed action" in m for m in messages_of(response))


def test_retry_leaves_actions_that_are_not_failed_alone(quest_rules, ingest, login):
    event = ingest("quest.completed", "alice", "bob", {"points": 10})
    locked = event.reward_actions.get(status=Status.LOCKED)

    response = login("finance").post(
        reverse("admin:connect_rewardaction_changelist"),
        {"action": "retry_failed", "_selected_action": [str(locked.pk)]},
        follow=True,
    )

    locked.refresh_from_db()
    assert locked.status == Status.LOCKED
    assert any("Not retried" in m and "locked" in m for m in messages_of(response))


def test_cancel_asks_for_a_reason_then_cancels_through_the_service(quest_rules, ingest, login, staff):
    event = ingest("quest.completed", "alice", "bob", {"points": 10})
    locked = event.reward_actions.get(status=Status.LOCKED)
    client = login("finance")
    url = reverse("admin:connect_rewardaction_changelist")
    selected = {"action": "cancel_with_reason", "_selected_action": [str(locked.pk)]}

    page = client.post(url, selected)
    assert page.status_code == 200
    assert 'id="cancel-form"' in page.content.decode()
    locked.refresh_from_db()
    assert locked.status == Status.LOCKED

    no_reason = client.post(url, {**selected, "apply": "1", "reason": "  "})
    assert no_reason.status_code == 200 and no_reason.context["form"].errors["reason"]
    locked.refresh_from_db()
    assert locked.status == Status.LOCKED

    done = client.post(url, {**selected, "apply": "1", "reason": "fraudulent referral"}, follow=True)
    locked.refresh_from_db()
    assert (locked.status, locked.cancel_reason, locked.cancelled_by) == (
        Status.CANCELLED,
        "fraudulent referral",
        staff("finance"),
    )
    assert any("Cancelled 1 action" in m for m in messages_of(done))


def test_rule_editors_cannot_cancel(quest_rules, ingest, login):
    event = ingest("quest.completed", "alice", "bob", {"points": 10})
    locked = event.reward_actions.get(status=Status.LOCKED)
    client = login("rule_editor")
    changelist = client.get(reverse("admin:connect_rewardaction_changelist"))
    offered = [name for name, _ in changelist.context["action_form"].fields["action"].choices]
    assert "retry_failed" in offered and "cancel_with_reason" not in offered

    client.post(
        reverse("admin:connect_rewardaction_changelist"),
        {"action": "cancel_with_reason", "_selected_action": [str(locked.pk)], "apply": "1", "reason": "no"},
    )
    assert (
        client.post(reverse("admin:connect_rewardaction_cancel", args=[locked.pk]), {"reason": "no"}).status_code == 403
    )

    locked.refresh_from_db()
    assert locked.status == Status.LOCKED


def test_one_action_can_be_retried_or_cancelled_from_its_page(quest_rules, ingest, login):
    event = ingest("quest.completed", "alice", "bob", {"points": 10})
    paid = event.reward_actions.get(target_user_id="alice")
    RewardAction.objects.filter(pk=paid.pk).update(status=Status.FAILED)
    client = login("superuser")
    page = client.get(reverse("admin:connect_rewardaction_change", args=[paid.pk])).content.decode()
    assert 'id="retry-action"' in page and 'id="cancel-action"' in page

    assert client.get(reverse("admin:connect_rewardaction_retry", args=[paid.pk])).status_code == 405
    response = client.post(reverse("admin:connect_rewardaction_retry", args=[paid.pk]))
    assert response.status_code == 302
    paid.refresh_from_db()
    assert paid.status == Status.PENDING

    locked = event.reward_actions.get(status=Status.LOCKED)
    cancel_url = reverse("admin:connect_rewardaction_cancel", args=[locked.pk])
    assert client.post(cancel_url, {"reason": ""}).status_code == 200
    assert client.post(cancel_url, {"reason": "duplicate"}).status_code == 302
    locked.refresh_from_db()
    assert (locked.status, locked.cancel_reason) == (Status.CANCELLED, "duplicate")
    page = client.get(reverse("admin:connect_rewardaction_change", args=[locked.pk])).content.decode()
    assert 'id="retry-action"' not in page and 'id="cancel-action"' not in page


def test_a_warning_shows_while_a_channel_is_not_configured(make_rule, ingest, login, settings):
    settings.NFT_SERVICE_URL = ""
    settings.G2A_GATEWAY_URL = "http://127.0.0.1:9"
    make_rule(
        "badge_rule", "quest.completed",
        [{"target": "actor", "reward_type": "nft", "amount": "1", "params": {"badge_type": "b"}}],
    )  # fmt: skip
    ingest("quest.completed", "alice")
    client = login("rule_editor")

    html = client.get(reverse("admin:connect_rewardaction_changelist")).content.decode()
    assert 'class="messagelist channel-warnings"' in html
    assert "<strong>nft</strong> is not configured" in html and "1 waiting now" in html
    assert "<strong>g2a_offchain</strong>" not in html

    settings.NFT_SERVICE_URL = "http://127.0.0.1:9"
    html = client.get(reverse("admin:connect_rewardaction_changelist")).content.decode()
    assert "channel-warnings" not in html


def test_an_action_links_to_the_rule_version_it_came_from(quest_rules, ingest, login, make_rule):
    event = ingest("quest.completed", "alice", None, {"points": 10})
    action = event.reward_actions.get(target_user_id="alice")
    make_rule("quest_rule", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "99"}])
    version_1 = quest_rules.versions.get(version=1)
    client = login("rule_editor")

    page = client.get(reverse("admin:connect_rewardaction_change", args=[action.pk])).content.decode()
    assert reverse("admin:rules_ruleversion_change", args=[version_1.pk]) in page
    listing = client.get(reverse("admin:connect_rewardaction_changelist")).content.decode()
    assert reverse("admin:rules_ruleversion_change", args=[version_1.pk]) in listing
    snapshot = client.get(reverse("admin:rules_ruleversion_change", args=[version_1.pk])).content.decode()
    assert "context.points" in snapshot

    finance_page = login("finance").get(reverse("admin:connect_rewardaction_change", args=[action.pk]))
    assert reverse("admin:rules_ruleversion_change", args=[version_1.pk]) not in finance_page.content.decode()


def test_the_channel_warning_counts_waiting_actions_only_up_to_a_bound(make_rule, ingest, login, settings, monkeypatch):
    from connect import admin as connect_admin

    monkeypatch.setattr(connect_admin, "WAITING_COUNT_LIMIT", 1)
    settings.NFT_SERVICE_URL = ""
    make_rule(
        "badge_rule", "quest.completed",
        [{"target": "actor", "reward_type": "nft", "amount": "1", "params": {"badge_type": "b"}}],
    )  # fmt: skip
    ingest("quest.completed", "alice")
    ingest("quest.completed", "bob")

    html = login("finance").get(reverse("admin:connect_rewardaction_changelist")).content.decode()

    assert "1+ waiting now" in html
