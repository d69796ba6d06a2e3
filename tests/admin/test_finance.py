"""Finance admin: statement, CSV export, manual adjustments, dashboard."""

import csv
import io
from datetime import timedelta

import pytest
from django.http import StreamingHttpResponse
from django.urls import reverse
from django.utils import timezone

from connect.admin import dashboard_data
from connect.models import RewardAction
from points import admin_views, services
from points.models import Account, Entry, Transaction

pytestmark = pytest.mark.django_db


def credit(user_id, amount, reason="", external_id=None, source="quest_service"):
    return services.account_credit(
        source=source, external_id=external_id or f"c-{user_id}-{Transaction.objects.count()}",
        user_id=user_id, amount=amount, reason=reason,
    ).transaction  # fmt: skip


def debit(user_id, amount, reason=""):
    return services.account_debit(
        source="shop", external_id=f"d-{user_id}-{Transaction.objects.count()}", user_id=user_id, amount=amount,
        reason=reason,
    ).transaction  # fmt: skip


def csv_rows(response) -> list[dict]:
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith("attachment;")
    text = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(text)))


def ledger_state():
    return (
        Transaction.objects.count(),
        Entry.objects.count(),
        list(Account.objects.order_by("pk").values_list("user_id", "balance", "held")),
    )


# --- statement ---------------------------------------------------------------------------------


def test_statement_shows_each_transaction_with_its_change_and_running_balance(login, staff):
    credit("alice", 100, "welcome")
    debit("alice", 30, "shop order")
    services.hold_create(source="shop", external_id="h1", user_id="alice", amount=20)
    services.account_adjust(user_id="alice", amount=5, reason="goodwill", staff_user=staff("finance"))
    account = Account.objects.get(user_id="alice")

    response = login("finance").get(reverse("admin:points_account_statement", args=[account.pk]))

    assert response.status_code == 200
    rows = [(t.kind, t.balance_change, t.held_change, t.balance_after, t.held_after) for t in response.context["page"]]
    assert rows == [
        ("adjustment", 5, 0, 75, 20),
        ("hold", 0, 20, 70, 20),
        ("debit", -30, 0, 70, 0),
        ("credit", 100, 0, 100, 0),
    ]
    html = response.content.decode()
    assert '<strong id="balance">75</strong>' in html and '<strong id="available">55</strong>' in html


def test_statement_filters_by_kind_and_dates_and_gives_the_opening_balance(login):
    old = credit("alice", 40)
    Transaction.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=10))
    credit("alice", 7)
    debit("alice", 2)
    account = Account.objects.get(user_id="alice")
    url = reverse("admin:points_account_statement", args=[account.pk])
    client = login("finance")

    since = (timezone.localdate() - timedelta(days=1)).isoformat()
    response = client.get(url, {"created_from": since})
    assert [t.amount for t in response.context["page"]] == [2, 7]
    assert response.context["opening_balance"] == 40

    response = client.get(url, {"kind": "credit"})
    assert [t.amount for t in response.context["page"]] == [7, 40]
    assert "user=alice" in response.context["export_url"] and "kind__exact=credit" in response.context["export_url"]

    response = client.get(url, {"created_from": "not-a-date"})
    assert response.status_code == 200
    assert len(response.context["page"].object_list) == 3


def test_statement_of_an_unknown_or_system_account_is_404(login):
    client = login("finance")
    assert client.get(reverse("admin:points_account_statement", args=[999999])).status_code == 404
    system = Account.objects.filter(kind=Account.Kind.SYSTEM).first()
    assert client.get(reverse("admin:points_account_statement", args=[system.pk])).status_code == 404


# --- CSV -------------------------------------------------------------------------------------


def test_csv_export_keeps_the_changelists_filters_and_search(login):
    credit("alice", 10, "reward:quest")
    credit("alice", 11, "bonus")
    debit("alice", 3)
    credit("bob", 99, "reward:quest")
    client = login("finance")

    changelist = client.get(reverse("admin:points_transaction_changelist"), {"user": "alice", "kind__exact": "credit"})
    assert changelist.status_code == 200
    assert [t.amount for t in changelist.context["cl"].result_list] == [11, 10]
    export_href = reverse("admin:points_transaction_export") + "?user=alice&amp;kind__exact=credit"
    assert export_href in changelist.content.decode()

    rows = csv_rows(client.get(reverse("admin:points_transaction_export"), {"user": "alice", "kind__exact": "credit"}))
    assert [(r["user_id"], r["kind"], r["amount"], r["balance_change"], r["balance_after"]) for r in rows] == [
        ("alice", "credit", "11", "11", "21"),
        ("alice", "credit", "10", "10", "10"),
    ]
    assert list(rows[0]) == list(admin_views.CSV_COLUMNS)

    rows = csv_rows(client.get(reverse("admin:points_transaction_export"), {"reason": "reward:"}))
    assert sorted(r["user_id"] for r in rows) == ["alice", "bob"]

    external_id = Transaction.objects.get(amount=99).external_id
    rows = csv_rows(client.get(reverse("admin:points_transaction_export"), {"q": external_id}))
    assert [r["external_id"] for r in rows] == [external_id]


def test_csv_export_filters_by_date_range(login):
    old = credit("alice", 1)
    Transaction.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=40))
    credit("alice", 2)
    today = timezone.localdate().isoformat()

    rows = csv_rows(login("finance").get(reverse("admin:points_transaction_export"), {"created_from": today}))

    assert [r["amount"] for r in rows] == ["2"]


def test_csv_export_streams_in_chunks_and_exports_every_row(login, monkeypatch, django_assert_max_num_queries):
    monkeypatch.setattr(admin_views, "CSV_CHUNK_SIZE", 3)
    for n in range(1, 9):
        credit("alice", n)
    response = login("finance").get(reverse("admin:points_transaction_export"), {"user": "alice"})

    with django_assert_max_num_queries(2):  # one cursor, fetched chunk by chunk (not one query per row)
        rows = csv_rows(response)

    assert [r["amount"] for r in rows] == [str(n) for n in range(8, 0, -1)]


def test_csv_export_action_exports_the_selected_rows(login):
    first = credit("alice", 5)
    credit("alice", 6)
    response = login("finance").post(
        reverse("admin:points_transaction_changelist"),
        {"action": "export_csv", "_selected_action": [str(first.pk)]},
    )
    assert [r["transaction_id"] for r in csv_rows(response)] == [str(first.pk)]


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(login):
    credit("alice", 5, reason='=HYPERLINK("http://x","y")')

    (row,) = csv_rows(login("finance").get(reverse("admin:points_transaction_export"), {"user": "alice"}))

    assert row["reason"] == '\'=HYPERLINK("http://x","y")'


# --- manual adjustment -------------------------------------------------------------------------


def adjustment(client, **fields):
    form = client.get(reverse("admin:points_account_adjust"), {"user_id": fields.get("user_id", "")})
    token = form.context["form"].initial["token"]
    data = {"direction": "credit", "token": str(token), **fields}
    return client.post(reverse("admin:points_account_adjust"), data)


def test_an_adjustment_posts_a_compensating_transaction_recorded_with_the_staff_user(login, staff):
    credit("alice", 10)
    client = login("finance")

    response = adjustment(client, user_id="alice", direction="debit", amount="4", reason="duplicate reward")

    account = Account.objects.get(user_id="alice")
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:points_account_statement", args=[account.pk])
    assert (account.balance, account.available) == (6, 6)
    txn = Transaction.objects.get(kind=Transaction.Kind.ADJUSTMENT)
    assert (txn.amount, txn.reason, txn.created_by, txn.source) == (4, "duplicate reward", staff("finance"), "staff")
    assert txn.metadata == {"staff_user": "finance", "direction": "debit"}
    assert sorted(Entry.objects.filter(transaction=txn).values_list("amount", flat=True)) == [-4, 4]
    page = client.get(response["Location"])
    assert "Debited 4 point(s) to alice" in page.content.decode()


def test_an_adjustment_that_would_overdraw_is_refused_at_the_field_and_changes_nothing(login):
    credit("alice", 10)
    services.hold_create(source="shop", external_id="h1", user_id="alice", amount=8)
    before = ledger_state()

    response = adjustment(login("finance"), user_id="alice", direction="debit", amount="3", reason="fix")

    assert response.status_code == 200
    errors = response.context["form"].errors
    assert "insufficient funds" in errors["amount"][0] and "2 point(s) available" in errors["amount"][0]
    assert ledger_state() == before


def test_an_adjustment_needs_a_reason_and_a_positive_amount(login):
    credit("alice", 10)
    before = ledger_state()
    client = login("finance")

    response = adjustment(client, user_id="alice", amount="5", reason="   ")
    assert set(response.context["form"].errors) == {"reason"}
    response = adjustment(client, user_id="alice", amount="0", reason="why")
    assert set(response.context["form"].errors) == {"amount"}
    assert ledger_state() == before


def test_submitting_the_same_adjustment_form_twice_posts_once(login):
    client = login("finance")
    form = client.get(reverse("admin:points_account_adjust"))
    data = {
        "user_id": "carol",
        "direction": "credit",
        "amount": "25",
        "reason": "compensation",
        "token": str(form.context["form"].initial["token"]),
        "new_account": "on",
    }

    assert client.post(reverse("admin:points_account_adjust"), data).status_code == 302
    assert client.post(reverse("admin:points_account_adjust"), data).status_code == 302

    assert Transaction.objects.filter(kind=Transaction.Kind.ADJUSTMENT).count() == 1
    assert Account.objects.get(user_id="carol").balance == 25
    conflicting = client.post(reverse("admin:points_account_adjust"), {**data, "amount": "26"})
    assert conflicting.status_code == 200 and conflicting.context["form"].non_field_errors()


def test_an_adjustment_to_a_user_without_an_account_must_be_confirmed(login):
    client = login("finance")

    response = adjustment(client, user_id="alcie", amount="5", reason="typo?")
    assert "No account exists for 'alcie'" in response.context["form"].errors["user_id"][0]
    assert not Account.objects.filter(user_id="alcie").exists()

    response = adjustment(client, user_id="alcie", amount="5", reason="new member bonus", new_account="on")
    assert response.status_code == 302
    assert Account.objects.get(user_id="alcie").balance == 5


def test_only_finance_and_superusers_can_post_an_adjustment(login):
    for role in ("rule_editor", "plain_staff"):
        response = login(role).post(
            reverse("admin:points_account_adjust"),
            {"user_id": "alice", "direction": "credit", "amount": "5", "reason": "x", "token": "0" * 32},
        )
        assert response.status_code == 403
    assert not Transaction.objects.exists()


# --- dashboard ---------------------------------------------------------------------------------


def test_dashboard_charts_ledger_credits_per_rule_per_day(login, make_rule, ingest):
    today = credit("alice", 30, "reward:quest_rule")
    credit("bob", 12, "reward:quest_rule")
    earlier = credit("alice", 5, "reward:referral_rule")
    Transaction.objects.filter(pk=earlier.pk).update(created_at=timezone.now() - timedelta(days=3))
    credit("carol", 7, "manual top-up")
    too_old = credit("dave", 1000, "reward:quest_rule")
    Transaction.objects.filter(pk=too_old.pk).update(created_at=timezone.now() - timedelta(days=45))
    debit("alice", 1)

    data = dashboard_data()

    issued = data["issued"]
    assert issued["total"] == 30 + 12 + 5 + 7
    assert {item["name"]: item["total"] for item in issued["legend"]} == {
        "quest_rule": 42,
        "other credits": 7,
        "referral_rule": 5,
    }
    bars = {bar["day"]: bar["total"] for bar in issued["bars"]}
    assert len(bars) == 30
    assert bars[timezone.localdate(today.created_at)] == 49
    assert bars[timezone.localdate() - timedelta(days=3)] == 5
    assert data["largest"][0]["account"].user_id == "dave"

    response = login("finance").get(reverse("admin:connect_dashboard"))
    html = response.content.decode()
    assert '<strong id="issued-total">54</strong>' in html
    # today: quest_rule and other credits stacked; three days ago: referral_rule; the 45-day-old credit is out
    assert html.count("<rect ") == 3


def test_dashboard_counts_actions_by_status_and_what_needs_attention(login, make_rule, ingest):
    make_rule("quest_rule", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "10"}])
    make_rule(
        "locked_rule", "quest.completed",
        [{"target": "primary_subject", "reward_type": "points", "amount": "5", "lock_condition": "vip"}],
    )  # fmt: skip
    first = ingest("quest.completed", "alice", "bob")
    ingest("quest.completed", "carol", "dave")
    RewardAction.objects.filter(event=first, rule__code="quest_rule").update(status=RewardAction.Status.FAILED)

    data = dashboard_data()

    counts = {row["status"]: row["count"] for row in data["statuses"]}
    assert counts == {"locked": 2, "pending": 1, "dispatched": 0, "completed": 0, "failed": 1, "cancelled": 0}
    assert (data["failed_count"], data["locked_count"]) == (1, 2)
    html = login("finance").get(reverse("admin:connect_dashboard")).content.decode()
    assert '<strong id="failed-count">1</strong>' in html and '<strong id="locked-count">2</strong>' in html


def test_dashboard_needs_a_fixed_number_of_queries(login, django_assert_max_num_queries):
    for n in range(20):
        credit(f"user{n}", n + 1, f"reward:rule_{n % 9}")
    client = login("finance")
    client.get(reverse("admin:connect_dashboard"))  # warm the session and content-type caches

    with django_assert_max_num_queries(12):
        assert client.get(reverse("admin:connect_dashboard")).status_code == 200


# --- lots ----------------------------------------------------------------------------------------


def test_finance_reads_lots_and_can_change_none(login):
    moment = timezone.now() + timedelta(days=9)
    services.account_credit(source="quest_service", external_id="lot-c", user_id="alice", amount=70, expires_at=moment)
    debit("alice", 20)
    client = login("finance")

    changelist = client.get(reverse("admin:points_lot_changelist"), {"user": "alice"})

    assert changelist.status_code == 200
    lots = list(changelist.context["cl"].queryset)
    assert [(lot.amount, lot.remaining, lot.expires_at) for lot in lots] == [(70, 50, moment)]
    assert client.get(reverse("admin:points_lot_change", args=[lots[0].pk])).status_code == 200
    assert client.post(reverse("admin:points_lot_change", args=[lots[0].pk]), {"remaining": 70}).status_code == 403
    assert lots[0].__class__.objects.get(pk=lots[0].pk).remaining == 50
