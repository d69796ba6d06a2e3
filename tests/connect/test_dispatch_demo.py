"""``manage.py demo`` against a live server (tasks inline): the seed workflows end in the ledger."""

import re
from io import StringIO

import pytest
from django.core.management import call_command

from connect.models import EconomicEvent, RewardAction
from points.models import ServiceClient, ServiceClientKey
from points.selectors import account_totals
from points.verification import ledger_verify

pytestmark = pytest.mark.usefixtures("demo_rules")

EXPECTED_BALANCES = {
    "sponsor": 100 + 10 + 50,  # first-level referral, upline 2 of the booking, the released level-2 reward
    "newbie": 100 + 30,  # sponsor of the tenant, upline 1 of the booking
    "tenant": 120,
    "player": 40 + 30,
    "author": 20 + 15,
    "buyer": 10,
    "promoter": 50,
    "partner": 0,  # paid in G2A tokens, not points
    "host": 20,
    "reviewer": 5,
    "curator": 2,
}
# Then the demo refunds the premium voucher in half and cancels the booking (SPEC §12).
AFTER_REFUNDS = {
    **EXPECTED_BALANCES,
    "buyer": 10 - 5,
    "promoter": 50 - 25,
    "sponsor": 100 + 50,
    "newbie": 100,
    "tenant": 0,
    "host": 0,
}


def _run_demo(live_server, tag: str) -> str:
    out = StringIO()
    call_command("demo", base_url=live_server.url, tag=tag, wait=20, stdout=out)
    return out.getvalue()


def _row(output: str, *cells: str) -> bool:
    return any(all(re.search(rf"(^|\s){re.escape(c)}(\s|$)", line) for c in cells) for line in output.splitlines())


def test_demo_posts_the_seed_workflows_and_prints_actions_and_balances(live_server, settings):
    settings.NFT_SERVICE_URL = ""
    settings.G2A_GATEWAY_URL = ""

    output = _run_demo(live_server, "t1")

    assert EconomicEvent.objects.filter(external_id__startswith="t1-evt-").count() == 9
    assert set(ServiceClient.objects.values_list("name", flat=True)) >= {
        "referral_service", "quest_service", "voucher_service", "rielt_service", "rf_service", "user_service",
        "demo_console",
    }  # fmt: skip
    actions = RewardAction.objects.filter(event__external_id__startswith="t1-evt-")
    assert actions.count() == 17
    assert set(actions.filter(reward_type="points").values_list("status", flat=True)) == {"completed"}
    badge = actions.get(reward_type="nft")
    assert (badge.status, badge.attempts, badge.last_error) == ("pending", 0, "NFT_SERVICE_URL is not configured")
    payout = actions.get(reward_type="g2a_offchain")
    # not delivered (no gateway): the refund reduced it in place to half
    assert (payout.target_user_id, payout.amount, payout.reversed_amount, payout.status) == (
        "t1-partner", 50, 50, "pending"
    )  # fmt: skip
    deferred = actions.get(rule_code="referral_second_level_deferred")
    assert deferred.status == "completed" and deferred.target_user_id == "t1-sponsor"

    before, after = output.split("Balances after the refunds", 1)
    for name, balance in EXPECTED_BALANCES.items():
        assert _row(before, f"t1-{name}", str(balance)), f"balance of {name} printed"
    for name, balance in AFTER_REFUNDS.items():
        assert account_totals(user_id=f"t1-{name}")["balance"] == balance, name
        if balance != EXPECTED_BALANCES[name]:
            assert _row(after, f"t1-{name}", str(balance)), f"balance of {name} after the refunds printed"
    assert _row(output, "t1-evt-1", "referral.joined", "referral_first_level_registration", "t1-sponsor", "points",
                "100", "completed")  # fmt: skip
    assert _row(output, "t1-evt-8", "quest_master_badge", "t1-player", "nft", "1", "pending")
    assert "NFT_SERVICE_URL is not configured" in output and "G2A_GATEWAY_URL is not configured" in output
    assert "Nothing is lost" in output
    assert "then paid" in output
    assert all(check.ok for check in ledger_verify())


def test_demo_reuses_the_service_clients_and_keeps_runs_apart(live_server):
    _run_demo(live_server, "r1")
    clients = ServiceClient.objects.count()

    output = _run_demo(live_server, "r2")

    assert ServiceClient.objects.count() == clients
    assert ServiceClientKey.objects.filter(name="demo", expiry_date__isnull=False).count() == 2 * clients
    assert account_totals(user_id="r2-sponsor")["balance"] == AFTER_REFUNDS["sponsor"]
    assert account_totals(user_id="r1-sponsor")["balance"] == AFTER_REFUNDS["sponsor"]
    assert "created with scopes" not in output


def test_demo_delivers_badges_and_payouts_when_the_channels_are_configured(live_server, httpserver, settings):
    settings.NFT_SERVICE_URL = httpserver.url_for("/nft")
    settings.G2A_GATEWAY_URL = httpserver.url_for("/g2a")
    httpserver.expect_request("/nft/badges", method="POST").respond_with_json({"badge_id": "b-1"}, status=201)
    httpserver.expect_request("/g2a/payouts", method="POST").respond_with_json({"payout_id": "p-1"}, status=201)
    httpserver.expect_request("/g2a/payouts/reverse", method="POST").respond_with_json({"reversed": "p-1"})

    output = _run_demo(live_server, "c1")

    actions = RewardAction.objects.filter(event__external_id__startswith="c1-evt-")
    assert set(actions.values_list("status", flat=True)) == {"completed"}
    assert actions.get(reward_type="nft").result == {"badge_id": "b-1"}
    # the refund of the voucher takes half of the paid payout back through the gateway
    reversal = RewardAction.objects.get(reverses=actions.get(reward_type="g2a_offchain"))
    assert (reversal.amount, reversal.status, reversal.result) == (50, "completed", {"reversed": "p-1"})
    assert "Nothing is lost" not in output


def test_demo_explains_an_unreachable_server(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="Is the server running"):
        call_command("demo", base_url="http://127.0.0.1:9", wait=1, stdout=StringIO())


def test_embedded_beat_round_expires_holds_and_sweeps(db, settings):
    from datetime import timedelta
    from io import StringIO

    from django.core.management import call_command
    from django.utils import timezone

    from points.models import Hold
    from points.services import account_credit, hold_create

    account_credit(source="svc", external_id="c", user_id="u", amount=10)
    hold = hold_create(source="svc", external_id="h", user_id="u", amount=4).transaction.hold
    Hold.objects.filter(pk=hold.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    out = StringIO()
    call_command("embedded_beat", "--once", stdout=out)
    assert "expired 1 hold(s)" in out.getvalue()
    assert Hold.objects.get(pk=hold.pk).status == Hold.Status.EXPIRED
