"""The user page and the finance reports (SPEC §17): who may open them (SPEC §11) and what they show."""

import csv
import io
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from connect.delivery import reward_action_dispatch
from connect.models import RewardAction
from points import services
from points.models import Account, Transaction

pytestmark = pytest.mark.django_db


@pytest.fixture
def paid_user(make_rule, ingest):
    """alice (sponsored by bob, who is sponsored by carol) earned 40 points from a quest and spent 15."""
    make_rule(
        "quest_rule", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "context.points"}]
    )
    ingest("referral.joined", "bob", "carol", {"level": 1})
    ingest("referral.joined", "alice", "bob", {"level": 1})
    event = ingest("quest.completed", "alice", "dave", {"points": 40}, external_id="quest-1")
    action = RewardAction.objects.get(event=event)
    reward_action_dispatch(action_id=action.pk)
    services.account_debit(source="shop", external_id="order-1", user_id="alice", amount=15, reason="order 1")
    action.refresh_from_db()
    assert action.status == RewardAction.Status.COMPLETED
    return {"event": event, "action": action}


def user_url(user_id: str) -> str:
    return reverse("admin_user_page", args=[user_id])


# --- user page -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "status"), [("superuser", 200), ("rule_editor", 200), ("finance", 200), ("plain_staff", 403)]
)
def test_the_user_page_is_open_to_the_roles_of_spec_11(paid_user, login, role, status):
    assert login(role).get(user_url("alice")).status_code == status


def test_the_user_page_asks_anonymous_visitors_to_log_in(client, db):
    response = client.get(user_url("alice"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


@pytest.mark.parametrize("role", ["superuser", "finance"])
def test_finance_sees_the_whole_user_with_statement_linked_to_actions_and_events(paid_user, login, role):
    response = login(role).get(user_url("alice"))
    html = response.content.decode()
    overview = response.context["overview"]

    assert (overview.account.balance, overview.account.held, overview.account.available) == (25, 0, 25)
    assert 'id="user-balance">25<' in html and 'id="user-available">25<' in html
    assert overview.upline == ["bob", "carol"]
    assert overview.profile.sponsor_id == "bob"
    # newest first, with the running balance after each transaction
    assert [(row.transaction.kind, row.transaction.balance_change, row.transaction.balance_after)
            for row in overview.statement] == [("debit", -15, 25), ("credit", 40, 40)]  # fmt: skip
    credit_row = overview.statement[1]
    assert credit_row.action == paid_user["action"]
    assert reverse("admin:connect_rewardaction_change", args=[paid_user["action"].pk]) in html
    assert reverse("admin:connect_economicevent_change", args=[paid_user["event"].pk]) in html
    assert [a.pk for a in overview.actions] == [paid_user["action"].pk]
    assert {e.event_type for e in overview.events} == {"quest.completed", "referral.joined"}
    assert user_url("bob") in html and user_url("carol") in html and user_url("dave") in html


def test_rule_editors_see_the_user_page_without_ledger_figures(paid_user, login):
    response = login("rule_editor").get(user_url("alice"))
    html = response.content.decode()

    assert response.context["overview"].account is None
    assert response.context["overview"].statement == []
    for ledger_part in ('id="user-balance"', 'id="user-held"', 'id="user-available"', 'id="user-statement"',
                        'id="user-lots"', "order 1"):  # fmt: skip
        assert ledger_part not in html
    assert 'id="user-actions"' in html and "quest_rule v1" in html
    assert user_url("bob") in html


def test_an_unknown_user_gets_a_page_that_says_so(login, db):
    response = login("finance").get(user_url("nobody"))
    assert response.status_code == 200
    assert 'id="user-unknown"' in response.content.decode()


def test_the_search_box_opens_the_user_page_and_refuses_an_empty_id(login, db):
    client = login("rule_editor")
    response = client.get(reverse("admin_user_search"), {"q": "  alice  "})
    assert (response.status_code, response["Location"]) == (302, user_url("alice"))
    assert client.get(reverse("admin_user_search"), {"q": ""})["Location"] == reverse("admin:index")
    assert login("plain_staff").get(reverse("admin_user_search"), {"q": "alice"}).status_code == 403


def test_the_admin_index_has_the_user_search_box_for_those_who_may_use_it(login, db):
    assert 'id="user-search"' in login("finance").get(reverse("admin:index")).content.decode()
    assert 'id="user-search"' not in login("plain_staff").get(reverse("admin:index")).content.decode()


def test_user_ids_across_the_admin_link_to_the_user_page(paid_user, login):
    client = login("superuser")
    pages = [
        reverse("admin:connect_economicevent_changelist"),
        reverse("admin:connect_economicevent_change", args=[paid_user["event"].pk]),
        reverse("admin:connect_rewardaction_changelist"),
        reverse("admin:connect_rewardaction_change", args=[paid_user["action"].pk]),
        reverse("admin:connect_userprofile_changelist"),
        reverse("admin:points_account_changelist"),
        reverse("admin:points_transaction_changelist"),
        reverse("admin:points_account_statement", args=[Account.objects.get(user_id="alice").pk]),
        reverse("admin:connect_dashboard"),
    ]
    for page in pages:
        html = client.get(page).content.decode()
        assert f'href="{user_url("alice")}"' in html, page


# --- finance reports -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "status"), [("superuser", 200), ("rule_editor", 403), ("finance", 200), ("plain_staff", 403)]
)
def test_the_reports_and_their_csv_are_for_finance_only(login, db, role, status):
    client = login(role)
    assert client.get(reverse("admin_points_reports")).status_code == status
    assert client.get(reverse("admin_points_reports_csv")).status_code == status


@pytest.fixture
def ledger_history(db, staff):
    """Credits and debits this month and two months ago, and one staff adjustment."""
    services.account_credit(source="svc", external_id="c1", user_id="alice", amount=100, reason="quest")
    services.account_credit(source="svc", external_id="c2", user_id="bob", amount=50, reason="quest")
    services.account_debit(source="svc", external_id="d1", user_id="alice", amount=30, reason="order")
    services.account_adjust(user_id="bob", amount=-5, reason="typo", staff_user=staff("finance"), external_id="adj-1")
    old = timezone.now().replace(day=15) - timedelta(days=62)
    services.account_credit(source="svc", external_id="c0", user_id="carol", amount=7, reason="quest")
    Transaction.objects.filter(external_id="c0").update(created_at=old)
    return old


def test_the_reports_show_liability_monthly_flows_and_system_accounts(ledger_history, login):
    response = login("finance").get(reverse("admin_points_reports"))
    context = response.context
    html = response.content.decode()

    assert context["liability"] == 100 - 30 + 50 - 5 + 7
    assert context["system_total"] == -context["liability"]
    assert 'id="ledger-balances"' in html and "They agree with the liability." in html
    this_month = context["flows"][-1]
    assert (this_month.issued, this_month.spent, this_month.adjusted_out, this_month.net) == (150, 30, 5, 115)
    old_month = next(f for f in context["flows"] if f.month == ledger_history.date().replace(day=1))
    assert (old_month.issued, old_month.spent) == (7, 0)
    assert context["totals"].issued == 157
    assert len(context["flows"]) == 12
    assert {row["account"].code: row["total"] for row in context["systems"]}["points_issued"] == -157
    assert html.count("<rect") >= 3  # this month's issued, spent and the older month's issued
    # these credits never expire (POINTS_EXPIRE_AFTER_DAYS is 0): nothing is due in any window
    assert [window["points"] for window in context["expiring"]] == [0, 0, 0, 0]
    assert 'id="expiring-90"' in html and 'id="expiring-due"' not in html


def test_the_date_range_narrows_the_flows_and_the_csv(ledger_history, login):
    client = login("finance")
    month = ledger_history.date().replace(day=1)
    last = (month + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    query = {"from": month.isoformat(), "to": last.isoformat()}

    flows = client.get(reverse("admin_points_reports"), query).context["flows"]
    assert [(f.month, f.issued) for f in flows] == [(month, 7)]

    response = client.get(reverse("admin_points_reports_csv"), query)
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert rows == [{"month": f"{month:%Y-%m}", "issued": "7", "spent": "0", "reversed": "0", "expired": "0",
                     "adjusted_in": "0", "adjusted_out": "0", "returned": "0", "net": "7"}]  # fmt: skip


def test_a_bad_date_range_falls_back_to_twelve_months_with_a_message(ledger_history, login):
    response = login("finance").get(reverse("admin_points_reports"), {"from": "2026-05-01", "to": "2026-01-01"})
    assert response.status_code == 200
    assert len(response.context["flows"]) == 12
    assert "must not be after" in response.content.decode()
    assert login("finance").get(reverse("admin_points_reports"), {"from": "yesterday"}).status_code == 200


# --- dashboard date range ----------------------------------------------------------------------


def test_the_dashboard_covers_the_date_range_asked_for(login, db):
    services.account_credit(source="svc", external_id="now", user_id="alice", amount=30, reason="reward:quest_rule")
    services.account_credit(source="svc", external_id="old", user_id="bob", amount=1000, reason="reward:quest_rule")
    old_day = timezone.localdate() - timedelta(days=45)
    Transaction.objects.filter(external_id="old").update(created_at=timezone.now() - timedelta(days=45))
    client = login("finance")

    default = client.get(reverse("admin:connect_dashboard")).context
    assert (default["issued"]["total"], default["days"]) == (30, 30)

    ranged = client.get(reverse("admin:connect_dashboard"), {"from": (old_day - timedelta(days=1)).isoformat(),
                                                              "to": (old_day + timedelta(days=1)).isoformat()})  # fmt: skip
    assert (ranged.context["issued"]["total"], ranged.context["days"]) == (1000, 3)
    assert {bar["day"]: bar["total"] for bar in ranged.context["issued"]["bars"]}[old_day] == 1000

    too_long = client.get(reverse("admin:connect_dashboard"), {"from": "2020-01-01", "to": "2026-01-01"})
    assert too_long.context["days"] == 30
    assert "Pick a range" in too_long.content.decode()
    assert login("rule_editor").get(reverse("admin:connect_dashboard"), {"from": "2026-01-01"}).status_code == 403


def test_the_user_page_needs_a_bounded_number_of_queries(paid_user, login, django_assert_max_num_queries):
    client = login("finance")
    client.get(user_url("alice"))  # warm the session and content-type caches
    with django_assert_max_num_queries(20):
        assert client.get(user_url("alice")).status_code == 200


def test_the_user_page_shows_tier_badges_and_referrals(paid_user, ingest, login):
    ingest("user.upgraded_to_vip", "bob")
    ingest("user.upgraded_to_pro", "bob")
    response = login("rule_editor").get(user_url("bob"))
    html = response.content.decode()

    assert 'id="user-tier">pro<' in html
    assert 'class="badge badge-vip">VIP<' in html and 'class="badge badge-pro">PRO<' in html
    assert response.context["overview"].referrals == ["alice"]
    assert 'id="user-referrals">1<' in html
