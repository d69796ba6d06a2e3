"""The admin on a 1366×768 laptop screen (headless Chromium through Playwright): the user page, the
finance reports, the rules list, the reward actions list, the events list and the simulator form
each load, show the figures of the data the test made, and need no horizontal scrolling.

Screenshots are kept under ``test-artifacts/screenshots/`` (git-ignored).
"""

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import expect

from connect.delivery import reward_action_dispatch
from connect.models import RewardAction
from points import services
from points.models import Account, Transaction
from rules.demo import DEMO_RULES_PATH
from rules.services import rule_save_from_dict, rules_import

from .conftest import make_staff, rule_data
from .test_admin_lots_reversals import deliver_reversal
from .test_browser import SCREENSHOTS, TIMEOUT_MS, async_unsafe_allowed, browser, log_in  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LAPTOP = {"width": 1366, "height": 768}


@pytest.fixture
def laptop(browser):  # noqa: F811
    context = browser.new_context(accept_downloads=True, viewport=LAPTOP)
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    yield tab
    context.close()


@pytest.fixture
def shot(laptop, request):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(label: str):
        path = SCREENSHOTS / f"laptop-{request.node.name}-{label}.png"
        laptop.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 0

    return take


def assert_fits(page) -> None:
    """Nothing wider than the screen: not the page, and no table scrolled inside its box."""
    assert page.evaluate("document.documentElement.scrollWidth") <= LAPTOP["width"]
    overflowing = page.evaluate(
        "[...document.querySelectorAll('.results, .panel, .module, table')]"
        ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.id || e.className || e.tagName)"
    )
    assert overflowing == []


@pytest.fixture
def program(db, django_user_model):
    """The demo rules and a small history: alice joined under bob (under carol), completed quests,
    bought a premium voucher and spent some points; badges and G2A wait for unconfigured channels.
    Then a shop gave her 12 points expiring in 20 days and 8 expiring in 50 days."""
    rules_import(payload=json.loads(DEMO_RULES_PATH.read_text()))
    from connect.services import event_ingest

    def post(n, event_type, actor, subject=None, **context):
        # as real services send them: long opaque external ids
        data = {"external_id": f"{event_type}:{n}:3f2a9c0e-58b1-4f7e-9d63-0c1b2a3d4e5f", "event_type": event_type, "actor_user_id": actor,
                "primary_subject_user_id": subject, "context": context, "occurred_at": None}  # fmt: skip
        return event_ingest(client_name="seed_service", data=data).event

    post(1, "referral.joined", "bob", "carol", level=1)
    post(2, "referral.joined", "alice", "bob", level=1)
    post(3, "quest.completed", "alice", "bob", base_reward_points=40, total_quests_completed=12)
    post(4, "voucher.premium_purchased", "alice", None, amount=1000, rf_partner_id="rf_partner_7",
         pro_promoter_id="promoter_with_a_rather_long_identifier_0123456789")  # fmt: skip
    post(5, "rielt.booking_paid", "alice", None, amount=5000, host_user_id="host_1")
    for action in RewardAction.objects.filter(reward_type="points"):
        reward_action_dispatch(action_id=action.pk)
    services.account_debit(source="shop", external_id="order-1", user_id="alice", amount=25, reason="order 1")
    services.hold_create(source="shop", external_id="basket-1", user_id="alice", amount=5, reason="basket")
    now = timezone.now()
    services.account_credit(source="shop", external_id="promo-20d", user_id="alice", amount=12, reason="promo",
                            expires_at=now + timedelta(days=20))  # fmt: skip
    services.account_credit(source="shop", external_id="promo-50d", user_id="alice", amount=8, reason="promo",
                            expires_at=now + timedelta(days=50))  # fmt: skip
    for role in ("finance", "rule_editor"):
        make_staff(django_user_model, role)


def test_finance_reads_a_user_whole_the_reports_and_the_lists_on_a_laptop(laptop, shot, live_server, program):
    page = laptop
    log_in(page, live_server.url, "finance")
    expect(page.locator("#site-name")).to_contain_text("Rewards")
    shot("index")

    page.fill("#user-search-q", "alice")
    page.press("#user-search-q", "Enter")
    # alice: quest 40 + voucher 10 + booking 50 = 100 credited, 25 spent, then 12 + 8 of the promos
    expect(page.locator("#user-balance")).to_have_text("95")
    expect(page.locator("#user-held")).to_have_text("5")
    expect(page.locator("#user-available")).to_have_text("90")
    expect(page.locator("#user-sponsor")).to_contain_text("bob")
    expect(page.locator("#user-tree a.upline")).to_have_text(["bob", "carol"])
    # lots: the promos (soonest expiry first), then the never-expiring credits, the debit's 25 taken
    # from the oldest of those (the quest's 40)
    expect(page.locator("#user-lots tr.lot td.lot-remaining")).to_have_text(["12", "8", "15", "10", "50"])
    expect(page.locator("#user-lots tr.lot td.lot-expires").nth(4)).to_have_text("never")
    expect(page.locator("#user-expiring-30 strong")).to_have_text("12")
    expect(page.locator("#user-expiring-60 strong")).to_have_text("20")
    expect(page.locator("#user-expiring-90 strong")).to_have_text("20")
    expect(page.locator("#user-statement tr.statement-row")).to_have_count(7)
    expect(page.locator("#user-statement tr.statement-row td.balance-after").first).to_have_text("95")
    expect(page.locator("#user-statement a.event-link")).to_have_count(3)
    expect(page.locator("#user-actions tr.action-row")).to_have_count(4)
    expect(page.locator("#user-actions .badge-pending")).to_have_count(1)  # the badge waits for its channel
    shot("user-page")
    assert_fits(page)

    page.click("#user-statement a.event-link >> nth=0")
    expect(page.locator("#content h1")).to_contain_text("economic event")
    shot("event-page")
    assert_fits(page)

    page.goto(live_server.url + reverse("admin_points_reports"))
    expect(page.locator("#liability strong")).to_have_text(str(liability()))
    expect(page.locator("#flow-totals .spent")).to_have_text("25")
    expect(page.locator("#flow-totals .issued")).to_have_text(str(liability() + 25))
    expect(page.locator("#ledger-balances")).to_contain_text("agree")
    expect(page.locator("#expiring-30 strong")).to_have_text("12")
    expect(page.locator("#expiring-60 strong")).to_have_text("20")
    expect(page.locator("#expiring-90 strong")).to_have_text("20")
    expect(page.locator("#flows svg rect").first).to_be_visible()
    shot("reports")
    assert_fits(page)

    page.goto(live_server.url + reverse("admin:connect_rewardaction_changelist"))
    expect(page.locator("#result_list tbody tr")).to_have_count(RewardAction.objects.count())
    expect(page.locator("#result_list .badge-completed").first).to_be_visible()
    expect(page.locator("#result_list")).to_contain_text("promoter_with_a_rather_long_identifier_0123456789")
    shot("reward-actions")
    assert_fits(page)

    page.goto(live_server.url + reverse("admin:connect_economicevent_changelist"))
    expect(page.locator("#result_list tbody tr")).to_have_count(5)
    expect(page.locator("#result_list .badge-processed")).to_have_count(5)
    shot("events")
    assert_fits(page)

    page.goto(live_server.url + reverse("admin:points_transaction_changelist"))
    expect(page.locator("#result_list tbody tr")).to_have_count(Transaction.objects.count())
    shot("transactions")
    assert_fits(page)

    page.goto(
        live_server.url + reverse("admin:points_account_statement", args=[Account.objects.get(user_id="alice").pk])
    )
    expect(page.locator("#balance")).to_have_text("95")
    shot("statement")
    assert_fits(page)

    page.goto(live_server.url + reverse("admin:connect_dashboard"))
    expect(page.locator("#issued-total")).to_have_text(str(liability() + 25))
    shot("dashboard")
    assert_fits(page)


def liability() -> int:
    from points.reports import liability as total

    return total()


def test_a_rule_editor_reads_the_rules_list_and_simulates_from_the_form_on_a_laptop(laptop, shot, live_server, program):
    page = laptop
    log_in(page, live_server.url, "rule_editor")

    page.goto(live_server.url + reverse("admin:rules_rule_changelist"))
    first_level = page.locator("#result_list tr", has_text="referral_first_level_registration")
    expect(first_level.locator(".field-pays")).to_have_text("primary_subject: 100 points")
    expect(first_level.locator(".field-fired_30d")).to_have_text("2")
    expect(first_level.locator(".field-points_30d")).to_have_text("200")
    badge = page.locator("#result_list tr", has_text="quest_master_badge")
    expect(badge.locator(".field-pays")).to_have_text("actor: badge quest_master_10, once")
    expect(badge.locator(".field-points_30d")).to_have_text("0")
    shot("rules-list")
    assert_fits(page)

    page.click("#result_list a:text('quest_completed_rewards')")
    expect(page.locator("#id_rewards-0-target")).to_have_value("actor")
    shot("rule-page")
    assert_fits(page)
    page.click("#test-rule")
    expect(page.locator("tr.tested-rule")).to_contain_text("quest_completed_rewards")
    shot("test-this-rule")

    page.goto(live_server.url + reverse("admin:rules_rule_simulate"))
    page.select_option("#id_b-event_type", "quest.completed")
    expect(page.locator("#context-rows input[value=base_reward_points]")).to_have_count(1)
    page.fill("#id_b-actor_user_id", "erin")
    keys = page.locator("#context-rows tr.context-row")
    for index in range(keys.count()):
        key = keys.nth(index).locator("input").first.input_value()
        value = {"base_reward_points": "30", "total_quests_completed": "10"}.get(key)
        if value:
            keys.nth(index).locator("input").nth(1).fill(value)
    page.click("#simulate-form")
    expect(page.locator("#sim-outcome")).to_contain_text("2 reward actions would be created")
    expect(page.locator("tr.planned-action")).to_have_count(2)
    expect(page.locator("tr.planned-action", has_text="points")).to_contain_text("30")
    shot("simulator-form")
    assert_fits(page)

    page.goto(live_server.url + reverse("admin_user_page", args=["alice"]))
    expect(page.locator("#user-actions tr.action-row")).to_have_count(4)
    expect(page.locator("#user-balance")).to_have_count(0)
    expect(page.locator("#user-statement")).to_have_count(0)
    shot("user-page-without-ledger")
    assert_fits(page)


@pytest.fixture
def refunded_and_budgeted(program, django_user_model, settings, monkeypatch):
    """On top of ``program``: alice spends 80 of her 90 available points, then her quest is refunded
    in full: her reversal takes back 10 of 40 (shortfall 30). A budgeted campaign rule, and a webhook
    subscription with a long URL and two deliveries.

    The reversal actions are delivered here as SPEC §12 says dispatch delivers them (the dispatch of
    reversal actions is not part of this code yet), so the refund rings no doorbell."""
    import connect.services
    from connect.services import event_ingest
    from connect.webhooks.services import webhook_deliveries_enqueue, webhook_subscription_create

    monkeypatch.setattr(connect.services, "doorbell_ring_on_commit", lambda action_ids: None)
    services.account_debit(source="shop", external_id="order-2", user_id="alice", amount=80, reason="order 2")
    quest = RewardAction.objects.get(target_user_id="alice", event__event_type="quest.completed", reward_type="points")
    refund = event_ingest(client_name="seed_service", data={
        "external_id": "refund:3:3f2a9c0e-58b1-4f7e-9d63-0c1b2a3d4e5f", "event_type": "quest.refunded",
        "actor_user_id": "alice", "primary_subject_user_id": None, "context": {}, "occurred_at": None,
        "reverses_external_id": quest.event.external_id, "reversal_fraction": Decimal("1"),
    }).event  # fmt: skip
    reversal = deliver_reversal(RewardAction.objects.get(event=refund, reverses=quest))
    assert (reversal.amount, reversal.shortfall) == (40, 30)
    bob_reversal = deliver_reversal(RewardAction.objects.get(event=refund, target_user_id="bob"))
    assert (bob_reversal.amount, bob_reversal.shortfall) == (20, 0)
    rule, _ = rule_save_from_dict(data=rule_data(
        "spring_campaign_with_a_long_code_2026", "shop.bought",
        [{"target": "actor", "reward_type": "points", "amount": "floor(context.amount / 10)"}],
        budget=5000, budget_period="month", budget_policy="partial",
    ))  # fmt: skip
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    webhook_subscription_create(
        url="http://127.0.0.1:9/hooks/rewards/a-rather-long-path/with-a-query?tenant=0123456789abcdef0123456789",
        kinds=["event.failed", "reward_action.completed", "reward_action.failed"],
        secret="browser-secret-0123456789", description="Partner notifications",
    )  # fmt: skip
    with transaction.atomic():
        webhook_deliveries_enqueue(kind="event.failed", payload={"id": "e1"})
        webhook_deliveries_enqueue(kind="reward_action.failed", payload={"id": "a1"})
    make_staff(django_user_model, "superuser")
    return {"quest": quest, "refund": refund, "reversal": reversal, "rule": rule}


def test_reversals_traces_budgets_and_webhooks_fit_a_laptop(laptop, shot, live_server, refunded_and_budgeted):
    page, data = laptop, refunded_and_budgeted
    log_in(page, live_server.url, "superuser")

    page.goto(live_server.url + reverse("admin:connect_economicevent_change", args=[data["quest"].event_id]))
    expect(page.locator("table.trace tr.rule-trace").first).to_be_visible()
    expect(page.locator("table.trace .badge-completed", has_text="fired").first).to_be_visible()
    expect(page.locator(".field-reversed_by")).to_contain_text("refund:3:")
    shot("event-with-trace")
    assert_fits(page)

    page.goto(live_server.url + reverse("admin:connect_economicevent_change", args=[data["refund"].pk]))
    expect(page.locator("a.reversal-original")).to_contain_text("quest.completed")
    expect(page.locator(".inline-group .shortfall")).to_have_text("short 30")
    shot("reversal-event")
    assert_fits(page)

    page.goto(live_server.url + reverse("admin:connect_rewardaction_change", args=[data["reversal"].pk]))
    expect(page.locator(".field-shortfall_text .shortfall-amount")).to_have_text("30")
    expect(page.locator(".field-reverses_link a.reverses-link")).to_contain_text("40 points for alice")
    shot("reversal-action")
    assert_fits(page)

    page.goto(live_server.url + reverse("admin_points_reports"))
    expect(page.locator("#shortfalls tr.shortfall td.shortfall-amount")).to_have_text(["30"])
    expect(page.locator("#flow-totals .reversed")).to_have_text(str(10 + 20))
    shot("reports-with-shortfall")
    assert_fits(page)

    page.goto(live_server.url + reverse("admin_user_page", args=["alice"]))
    expect(page.locator("#user-balance")).to_have_text("5")
    expect(page.locator("#user-statement tr.statement-row").first).to_contain_text("(reversal)")
    shot("user-after-reversal")
    assert_fits(page)

    page.goto(live_server.url + reverse("admin:rules_rule_changelist"))
    campaign = page.locator("#result_list tr", has_text="spring_campaign")
    expect(campaign.locator(".field-budget_left")).to_contain_text("0 used, 5000 left of 5000")
    quests = page.locator("#result_list tr", has_text="quest_completed_rewards")
    expect(quests.locator(".field-fired_30d")).to_have_text("1")
    expect(quests.locator(".field-points_30d")).to_have_text(str(40 + 20 - 10 - 20))
    assert_fits(page)
    page.goto(live_server.url + reverse("admin:rules_rule_change", args=[data["rule"].pk]))
    expect(page.locator("#id_budget")).to_have_value("5000")
    expect(page.locator(".field-budget_this_period")).to_contain_text("0 used, 5000 left of 5000")
    shot("rule-with-budget")
    assert_fits(page)

    page.goto(live_server.url + reverse("admin:connect_webhooksubscription_changelist"))
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.locator("#result_list .badge-active")).to_have_count(1)
    shot("webhook-subscriptions")
    assert_fits(page)
    page.goto(live_server.url + reverse("admin:connect_webhookdelivery_changelist"))
    expect(page.locator("#result_list tbody tr")).to_have_count(2)
    expect(page.locator("#result_list .badge-pending")).to_have_count(2)
    shot("webhook-deliveries")
    assert_fits(page)
    page.click("#result_list tbody tr >> nth=0 >> th a")
    expect(page.locator(".field-payload_json pre")).to_be_visible()
    shot("webhook-delivery")
    assert_fits(page)
