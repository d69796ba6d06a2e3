"""The two staff journeys in a real browser (headless Chromium through Playwright).

A screenshot of every step is kept under ``test-artifacts/screenshots/`` (git-ignored).
Chromium is Debian's (``/usr/bin/chromium``); Playwright's own browser download is not used.
"""

import csv
import io
import json
import re
from pathlib import Path

import pytest
from django.urls import reverse
from playwright.sync_api import expect, sync_playwright

from points import services
from points.models import Account, Transaction
from rules.models import Rule

from .conftest import PASSWORD

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
TIMEOUT_MS = 15_000

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def async_unsafe_allowed():
    """Playwright's sync API keeps an event loop on this thread, so Django would refuse ORM calls made
    by the test (and the live server's teardown) as if they came from async code. Allowed for this
    module only."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        yield


@pytest.fixture(scope="module")
def browser(async_unsafe_allowed):
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    yield tab
    context.close()


@pytest.fixture
def shot(page, request):
    """``shot(label)`` saves a full-page screenshot named after the test and the step number."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    steps = iter(range(1, 100))

    def take(label: str) -> Path:
        path = SCREENSHOTS / f"{request.node.name}-{next(steps):02d}-{label}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 0
        return path

    return take


def log_in(page, base_url: str, username: str):
    page.goto(f"{base_url}{reverse('admin:login')}?next={reverse('admin:index')}")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#user-tools")).to_contain_text(username)


def test_rule_editor_fixes_an_expression_error_then_simulates_the_rule(page, shot, live_server, staff):
    staff("rule_editor")
    log_in(page, live_server.url, "rule_editor")
    shot("logged-in")

    page.goto(live_server.url + reverse("admin:rules_rule_add"))
    expect(page.locator("#expression-help")).to_be_visible()
    page.fill("#id_code", "quest_bonus")
    page.fill("#id_name", "Quest bonus")
    page.fill("#id_event_type", "quest.completed")
    page.fill("#id_condition", "context.level >=")
    page.fill("#id_rewards-0-target", "actor")
    page.select_option("#id_rewards-0-reward_type", "points")
    page.fill("#id_rewards-0-amount", "context.points * 2")
    page.fill("#id_rewards-0-params", "{}")
    shot("bad-expression-filled")
    page.click("input[name=_save]")

    condition_errors = page.locator(".field-condition .errorlist")
    expect(condition_errors).to_be_visible()
    expect(condition_errors).to_contain_text(re.compile(r"\S"))
    expect(page.locator(".errornote")).to_be_visible()
    shot("error-at-the-condition-field")
    assert not Rule.objects.filter(code="quest_bonus").exists()

    page.fill("#id_condition", "context.level >= 2")
    page.click("input[name=_save]")
    expect(page.locator(".messagelist .success")).to_contain_text("quest_bonus")
    shot("rule-saved")
    rule = Rule.objects.get(code="quest_bonus")
    assert (rule.condition, rule.version) == ("context.level >= 2", 1)

    page.goto(live_server.url + "/admin/rules/rule/simulate/")
    event = {
        "event_type": "quest.completed",
        "actor_user_id": "alice",
        "primary_subject_user_id": None,
        "context": {"level": 3, "points": 15},
    }
    page.fill("#id_event", json.dumps(event, indent=2))
    shot("simulator-event")
    page.click("input[name=simulate]")

    fired = page.locator("tr.line-trace.outcome-fired")
    expect(fired).to_have_count(1)
    expect(fired).to_contain_text("alice")
    expect(fired).to_contain_text("30")
    expect(page.locator("tr.planned-action")).to_contain_text("pending")
    expect(page.locator("#sim-outcome")).to_contain_text("1 reward action would be created")
    shot("simulator-fired-lines")

    event["context"]["level"] = 1
    page.fill("#id_event", json.dumps(event))
    page.click("input[name=simulate]")
    expect(page.locator("tr.rule-trace")).to_contain_text("condition is false")
    expect(page.locator("tr.planned-action")).to_have_count(0)
    shot("simulator-condition-false")
    assert not Transaction.objects.exists()


def test_finance_opens_a_statement_exports_csv_and_posts_an_adjustment(page, shot, live_server, staff):
    staff("finance")
    services.account_credit(source="quest_service", external_id="q-1", user_id="alice", amount=100, reason="quest")
    services.account_debit(source="shop", external_id="o-1", user_id="alice", amount=30, reason="order 1")
    services.account_credit(source="quest_service", external_id="q-2", user_id="bob", amount=5, reason="quest")
    log_in(page, live_server.url, "finance")

    page.goto(live_server.url + reverse("admin:points_account_changelist"))
    page.fill("#searchbar", "alice")
    page.press("#searchbar", "Enter")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    shot("account-search")
    page.click("#result_list a:text('Statement')")

    expect(page.locator("#balance")).to_have_text("70")
    expect(page.locator("#statement tbody tr")).to_have_count(2)
    expect(page.locator("#statement td.balance-after").first).to_have_text("70")
    shot("statement")

    with page.expect_download() as download_info:
        page.click("#statement-csv")
    download = download_info.value
    assert download.suggested_filename.endswith(".csv")
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text())))
    assert [(r["user_id"], r["kind"], r["amount"], r["balance_change"], r["balance_after"]) for r in rows] == [
        ("alice", "debit", "30", "-30", "70"),
        ("alice", "credit", "100", "100", "100"),
    ]
    shot("csv-downloaded")

    page.click("#statement-adjust")
    expect(page.locator("#id_user_id")).to_have_value("alice")
    page.check("input[name=direction][value=debit]")
    page.fill("#id_amount", "500")
    page.fill("#id_reason", "correction")
    page.click("#adjustment-form input[type=submit]")
    expect(page.locator(".field-amount .errorlist")).to_contain_text("insufficient funds")
    shot("overdraw-refused")

    page.check("input[name=direction][value=credit]")
    page.fill("#id_amount", "25")
    page.fill("#id_reason", "goodwill for a late delivery")
    page.click("#adjustment-form input[type=submit]")

    expect(page.locator(".messagelist .success")).to_contain_text("Credited 25 point(s) to alice")
    expect(page.locator("#balance")).to_have_text("95")
    expect(page.locator("#statement tbody tr").first).to_contain_text("goodwill for a late delivery")
    expect(page.locator("#statement tbody tr").first).to_contain_text("finance")
    shot("balance-after-adjustment")
    account = Account.objects.get(user_id="alice")
    assert account.balance == 95
    adjustment = Transaction.objects.get(kind=Transaction.Kind.ADJUSTMENT)
    assert (adjustment.amount, adjustment.created_by.username) == (25, "finance")

    page.goto(live_server.url + reverse("admin:index"))
    page.click("#staff-tools a:text('Dashboard')")
    expect(page.locator("#issued-total")).to_have_text("105")
    expect(page.locator("#issued svg rect")).to_have_count(1)
    expect(page.locator("#largest .hbar").first).to_contain_text("alice")
    expect(page.locator("#largest .hbar").first).to_contain_text("95")
    shot("dashboard")
