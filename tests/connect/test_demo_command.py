"""``manage.py demo`` as a newcomer meets it: it finds the server on PORT, numbers its steps in order,
and writes nothing when no server answers."""

import os
import re
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from connect.models import EconomicEvent
from points.models import ServiceClient, ServiceClientKey

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.django_db
def test_an_unreachable_server_is_explained_before_any_client_or_key_is_made():
    with pytest.raises(CommandError, match=r"Is the server running .*PORT"):
        call_command("demo", base_url="http://127.0.0.1:9", wait=1, stdout=StringIO())
    assert not ServiceClient.objects.exists() and not ServiceClientKey.objects.exists()


@pytest.mark.parametrize("port, expected", [("8123", "http://127.0.0.1:8123"), (None, "http://127.0.0.1:8000")])
def test_the_default_server_address_follows_port(port, expected):
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "DEMO_BASE_URL")}
    if port:
        env["PORT"] = port
    code = (
        "import django; django.setup();"
        "from connect.management.commands.demo import Command;"
        "print(Command().create_parser('manage.py', 'demo').get_default('base_url'))"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == expected


@pytest.mark.usefixtures("demo_rules")
def test_the_steps_are_numbered_in_the_order_they_are_posted(live_server, settings):
    settings.NFT_SERVICE_URL = settings.G2A_GATEWAY_URL = ""
    out = StringIO()
    call_command("demo", base_url=live_server.url, tag="n1", wait=20, stdout=out)
    numbers = [int(match) for match in re.findall(r"^  (\d+)\. ", out.getvalue(), flags=re.MULTILINE)]
    assert numbers == list(range(1, 12))
    assert EconomicEvent.objects.filter(external_id__startswith="n1-evt-").count() == 9
    assert "9. sponsor VIP: unlocks step 3" in out.getvalue()


@pytest.mark.usefixtures("demo_rules")
def test_the_demo_refunds_the_voucher_in_part_and_cancels_the_booking(live_server, settings):
    from points.selectors import account_totals

    settings.NFT_SERVICE_URL = settings.G2A_GATEWAY_URL = ""
    out = StringIO()
    call_command("demo", base_url=live_server.url, tag="r1", wait=20, stdout=out)
    text = out.getvalue()
    assert "10. premium voucher refunded (50%)" in text and "11. housing booking cancelled" in text
    refunds = EconomicEvent.objects.filter(external_id__startswith="r1-refund-").order_by("external_id")
    assert [(e.event_type, e.reverses.external_id) for e in refunds] == [
        ("voucher.refunded", "r1-evt-5"),
        ("rielt.booking_cancelled", "r1-evt-6"),
    ]
    balance = {
        user: account_totals(user_id=f"r1-{user}")["balance"] for user in ("promoter", "buyer", "host", "tenant")
    }
    # half of the voucher's points taken back; the booking's all (the tenant earned only by booking)
    assert balance == {"promoter": 25, "buyer": 5, "host": 0, "tenant": 0}
    assert "Balances after the refunds" in text
    after = text.split("Balances after the refunds", 1)[1]
    assert re.search(r"^r1-promoter\s+25\s", after, flags=re.MULTILINE)
