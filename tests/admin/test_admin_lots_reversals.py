"""The admin wired to the ledger's lots and reversals (SPEC §12, §13, §17): expiry figures on the
reports and the user page, reversed and expired points per month, reversal shortfalls, rule activity
net of reversals, and the event and reward action pages of a reversal, per role (SPEC §11)."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from connect.delivery import reward_action_dispatch
from connect.models import RewardAction
from points import services
from points.expiry import lots_expire_due
from points.models import Lot, Transaction
from points.reversals import transaction_reverse
from points.verification import ledger_verify

pytestmark = pytest.mark.django_db


def user_url(user_id: str) -> str:
    return reverse("admin_user_page", args=[user_id])


@pytest.fixture
def lots_history(db):
    """erin's lots: credits expiring in 1 hour, 10, 45, 80 and 120 days and never; a debit that takes
    from the soonest lot, a partial reversal of that debit and of a credit, and an expiry run."""
    now = timezone.now()

    def credit(external_id: str, amount: int, expires_in: timedelta | None):
        return services.account_credit(
            source="svc", external_id=external_id, user_id="erin", amount=amount, reason="quest",
            expires_at=now + expires_in if expires_in else None,
        ).transaction  # fmt: skip

    credit("soon", 25, timedelta(hours=1))
    credit("d10", 20, timedelta(days=10))
    credit("d45", 30, timedelta(days=45))
    credit("d80", 40, timedelta(days=80))
    credit("never", 50, None)
    credit("d120", 60, timedelta(days=120))
    refundable = credit("refundable", 35, None)
    debit = services.account_debit(source="svc", external_id="order", user_id="erin", amount=15, reason="order")
    transaction_reverse(source="svc", external_id="order-refund", transaction_id=debit.transaction.pk, amount=4)
    transaction_reverse(source="svc", external_id="credit-back", transaction_id=refundable.pk, amount=5)
    run = lots_expire_due(now=now + timedelta(hours=2))
    assert (run.expired_lots, run.expired_points) == (1, 25 - 15 + 4)
    return now


def test_the_reports_show_expiring_points_from_lots_and_every_flow_of_the_month(lots_history, login):
    response = login("finance").get(reverse("admin_points_reports"))
    context, html = response.context, response.content.decode()

    # 25+20+30+40+50+60+35 credited, 15 spent, 4 of it given back, 5 of a credit taken back, 14 expired
    assert context["liability"] == 260 - 15 + 4 - 5 - 14 == 230
    assert context["expiring"] == [
        {"days": 0, "points": 0},
        {"days": 30, "points": 20},
        {"days": 60, "points": 20 + 30},
        {"days": 90, "points": 20 + 30 + 40},
    ]
    assert 'id="expiring-30"' in html and "<strong>20</strong>" in html and "<strong>90</strong>" in html
    assert 'id="expiring-none"' not in html and 'id="expiring-due"' not in html
    month = context["flows"][-1]
    assert (month.issued, month.spent, month.returned, month.reversed, month.expired) == (260, 15, 4, 5, 14)
    assert month.net == 230
    assert context["system_total"] == -230 and "They agree with the liability." in html
    totals = {row["account"].code: row["total"] for row in context["systems"]}
    assert (totals["points_issued"], totals["points_expired"]) == (-260 + 5, 14)
    assert all(check.ok for check in ledger_verify())


def test_points_due_but_spared_by_a_hold_show_as_due(db, login):
    services.account_credit(source="svc", external_id="c", user_id="fay", amount=10, reason="quest",
                            expires_at=timezone.now() + timedelta(minutes=5))  # fmt: skip
    services.hold_create(source="svc", external_id="h", user_id="fay", amount=10, reason="cart")
    assert lots_expire_due(now=timezone.now() + timedelta(minutes=10)).expired_points == 0
    Lot.objects.filter(account__user_id="fay").update(expires_at=timezone.now() - timedelta(minutes=1))

    response = login("finance").get(reverse("admin_points_reports"))
    assert response.context["expiring"][0] == {"days": 0, "points": 10}
    assert 'id="expiring-due"' in response.content.decode()


@pytest.mark.parametrize("role", ["superuser", "finance"])
def test_the_user_page_shows_the_open_lots_and_what_expires_when(lots_history, login, role):
    response = login(role).get(user_url("erin"))
    overview, html = response.context["overview"], response.content.decode()

    # in the order spending takes them: soonest expiry first, never-expiring last (oldest first)
    assert [(lot.amount, lot.remaining) for lot in overview.lots] == [
        (20, 20), (30, 30), (40, 40), (60, 60), (50, 50), (35, 30),
    ]  # fmt: skip
    assert sum(lot.remaining for lot in overview.lots) == overview.account.balance == 230
    assert [window["points"] for window in overview.expiring] == [0, 20, 50, 90]
    assert 'id="user-expiring-30">Expiring within 30 days: <strong>20</strong>' in html
    assert 'id="user-expiring-90">Expiring within 90 days: <strong>90</strong>' in html
    assert html.count('class="lot"') == 6 and ">never<" in html
    # the statement names what each reversal reverses
    assert html.count('class="reverses-txn"') == 2
    kinds = [row.transaction.kind for row in overview.statement]
    assert kinds[:3] == ["points_expiry", "reversal", "reversal"]
    assert overview.statement[0].transaction.balance_change == -14


def test_rule_editors_see_no_lots_or_expiry(lots_history, login):
    response = login("rule_editor").get(user_url("erin"))
    html = response.content.decode()
    assert response.context["overview"].lots == [] and response.context["overview"].expiring == []
    assert 'id="user-lots"' not in html and 'id="user-expiring' not in html


# --- reversal actions (SPEC §12) -------------------------------------------------------------------


def deliver_reversal(action: RewardAction) -> RewardAction:
    """Deliver a points reversal action as SPEC §12 says dispatch does: a ledger reversal of the
    original's credit with allow_partial, keeping the shortfall on the action."""
    result = transaction_reverse(
        source=settings.CONNECT_LEDGER_SOURCE,
        external_id=str(action.pk),
        original_external_id=str(action.reverses_id),
        amount=action.amount,
        allow_partial=True,
        reason=f"reversal of {action.reverses_id}",
    )
    action.status, action.shortfall = RewardAction.Status.COMPLETED, result.transaction.shortfall
    action.completed_at = timezone.now()
    action.save(update_fields=["status", "shortfall", "completed_at"])
    return action


@pytest.fixture
def refunded(make_rule, ingest):
    """alice earned 40 points from a quest and spent 30; the quest is refunded in full, so the reversal
    action can take back only 10 (shortfall 30). bob's quest pays 5 and is not refunded."""
    rule = make_rule(
        "quest_rule", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "context.points"}]
    )
    quest = ingest("quest.completed", "alice", None, {"points": 40}, external_id="quest-1")
    original = RewardAction.objects.get(event=quest)
    reward_action_dispatch(action_id=original.pk)
    other = ingest("quest.completed", "bob", None, {"points": 5}, external_id="quest-2")
    reward_action_dispatch(action_id=RewardAction.objects.get(event=other).pk)
    services.account_debit(source="shop", external_id="order-1", user_id="alice", amount=30, reason="order")
    refund = ingest("quest.refunded", "alice", None, {}, external_id="refund-1", reverses_external_id="quest-1",
                    reversal_fraction=Decimal("1"))  # fmt: skip
    reversal = deliver_reversal(RewardAction.objects.get(event=refund, reverses=original))
    original.refresh_from_db()
    assert (original.status, original.reversed_amount, reversal.amount, reversal.shortfall) == ("completed", 40, 40, 30)
    return {"rule": rule, "quest": quest, "original": original, "refund": refund, "reversal": reversal}


def test_the_rules_list_counts_no_reversal_as_fired_and_pays_net_of_what_reversals_took_back(refunded, login):
    response = login("rule_editor").get(reverse("admin:rules_rule_changelist"))
    activity = {rule.code: rule.activity_30d for rule in response.context["cl"].result_list}["quest_rule"]
    # two quests fired (the refund event made only a reversal action); 45 paid, 10 of it taken back
    assert (activity.fired, activity.points) == (2, 40 + 5 - (40 - 30))
    assert '<td class="field-points_30d">35</td>' in response.content.decode()


def test_a_pending_reversal_takes_nothing_back_from_paid_yet(make_rule, ingest, login):
    make_rule("quest_rule", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "7"}])
    quest = ingest("quest.completed", "alice", None, {}, external_id="quest-1")
    reward_action_dispatch(action_id=RewardAction.objects.get(event=quest).pk)
    ingest("quest.refunded", "alice", None, {}, external_id="refund-1", reverses_external_id="quest-1")
    response = login("rule_editor").get(reverse("admin:rules_rule_changelist"))
    activity = {rule.code: rule.activity_30d for rule in response.context["cl"].result_list}["quest_rule"]
    assert (activity.fired, activity.points) == (1, 7)


def test_the_reports_list_reversal_shortfalls_with_their_actions(refunded, login):
    response = login("finance").get(reverse("admin_points_reports"))
    html = response.content.decode()
    assert [action.pk for action in response.context["shortfalls"]] == [refunded["reversal"].pk]
    assert '<td class="num shortfall-amount">30</td>' in html
    assert reverse("admin:connect_rewardaction_change", args=[refunded["reversal"].pk]) in html
    assert reverse("admin:connect_rewardaction_change", args=[refunded["original"].pk]) in html
    month = response.context["flows"][-1]
    assert (month.issued, month.spent, month.reversed) == (45, 30, 10)


def test_the_user_statement_links_a_reversal_to_its_reversal_action_and_event(refunded, login):
    response = login("finance").get(user_url("alice"))
    row = response.context["overview"].statement[0]
    assert (row.transaction.kind, row.transaction.balance_change, row.transaction.shortfall) == ("reversal", -10, 30)
    assert row.action == refunded["reversal"]
    html = response.content.decode()
    assert reverse("admin:connect_economicevent_change", args=[refunded["refund"].pk]) in html
    assert "quest_rule v1 (reversal)" in html and ", short 30" in html


@pytest.mark.parametrize("role", ["superuser", "rule_editor", "finance"])
def test_a_reversal_event_page_links_its_original_and_lists_its_reversal_actions(refunded, login, role):
    client = login(role)
    html = client.get(reverse("admin:connect_economicevent_change", args=[refunded["refund"].pk])).content.decode()
    original_url = reverse("admin:connect_economicevent_change", args=[refunded["quest"].pk])
    assert f'class="reversal-original" href="{original_url}"' in html
    reversal_url = reverse("admin:connect_rewardaction_change", args=[refunded["reversal"].pk])
    assert reversal_url in html and "short 30" in html
    original_html = client.get(original_url).content.decode()
    assert "Reversed by" in original_html and "refund-1" in original_html
    assert 'class="data trace"' in original_html and "badge badge-completed trace-code" in original_html


def test_the_event_pages_are_closed_to_staff_without_a_role(refunded, login):
    response = login("plain_staff").get(reverse("admin:connect_economicevent_change", args=[refunded["refund"].pk]))
    assert response.status_code == 403


@pytest.mark.parametrize("role", ["superuser", "rule_editor", "finance"])
def test_a_reward_action_page_shows_what_it_reverses_and_its_shortfall(refunded, login, role):
    client = login(role)
    reversal, original = refunded["reversal"], refunded["original"]
    html = client.get(reverse("admin:connect_rewardaction_change", args=[reversal.pk])).content.decode()
    assert reverse("admin:connect_rewardaction_change", args=[original.pk]) in html
    assert reverse("admin:connect_economicevent_change", args=[refunded["quest"].pk]) in html
    assert 'class="badge badge-failed shortfall-amount">30<' in html and "10 taken back" in html

    html = client.get(reverse("admin:connect_rewardaction_change", args=[original.pk])).content.decode()
    assert "Reversal actions" in html and reverse("admin:connect_rewardaction_change", args=[reversal.pk]) in html
    assert '<div class="readonly">40</div>' in html  # reversed amount

    listing = client.get(reverse("admin:connect_rewardaction_changelist")).content.decode()
    assert "−40 points (reversal)" in listing


def test_reward_action_pages_are_closed_to_staff_without_a_role(refunded, login):
    url = reverse("admin:connect_rewardaction_change", args=[refunded["reversal"].pk])
    assert login("plain_staff").get(url).status_code == 403


def test_an_undelivered_reversal_says_its_shortfall_is_not_known_yet(make_rule, ingest, login):
    make_rule("quest_rule", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "7"}])
    quest = ingest("quest.completed", "alice", None, {}, external_id="quest-1")
    reward_action_dispatch(action_id=RewardAction.objects.get(event=quest).pk)
    refund = ingest("quest.refunded", "alice", None, {}, external_id="refund-1", reverses_external_id="quest-1")
    reversal = RewardAction.objects.get(event=refund)
    html = login("finance").get(reverse("admin:connect_rewardaction_change", args=[reversal.pk])).content.decode()
    assert "not known until the reversal is delivered" in html
    assert not Transaction.objects.filter(kind="reversal").exists()
