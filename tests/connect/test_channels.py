"""Every outbound channel against a real local HTTP server, and the points channel against the ledger."""

import json
import socket
import threading
import time
import uuid

import pytest
from werkzeug import Response

from connect.channels import (
    CHANNELS,
    ChannelNotConfigured,
    PermanentChannelError,
    TransientChannelError,
    channel_problems,
    channel_status,
)
from connect.models import EconomicEvent, RewardAction
from points.models import Transaction
from points.selectors import account_totals


def _action(reward_type: str, **fields) -> RewardAction:
    """An unsaved action: the HTTP channels only read it."""
    defaults = {"id": uuid.uuid4(), "target_user_id": "alice", "reward_type": reward_type, "amount": 1, "params": {}}
    return RewardAction(**{**defaults, **fields})


@pytest.fixture
def nft_service(httpserver, settings):
    settings.NFT_SERVICE_URL = httpserver.url_for("/nft")
    settings.NFT_SERVICE_TOKEN = "nft-secret"
    settings.CHANNEL_CONNECT_TIMEOUT_SECONDS = 1
    settings.CHANNEL_READ_TIMEOUT_SECONDS = 0.5
    return httpserver


@pytest.fixture
def gateway(httpserver, settings):
    settings.G2A_GATEWAY_URL = httpserver.url_for("/g2a/")
    settings.G2A_GATEWAY_TOKEN = "g2a-secret"
    settings.CHANNEL_CONNECT_TIMEOUT_SECONDS = 1
    settings.CHANNEL_READ_TIMEOUT_SECONDS = 0.5
    return httpserver


# --- NFT ---------------------------------------------------------------------------------------


def test_nft_badge_is_posted_with_bearer_token_and_idempotency_key(nft_service):
    action = _action("nft", params={"badge_type": "quest_master_10", "season": 3})
    nft_service.expect_oneshot_request(
        "/nft/badges",
        method="POST",
        headers={"Authorization": "Bearer nft-secret", "Idempotency-Key": str(action.pk)},
        json={
            "user_id": "alice",
            "badge_type": "quest_master_10",
            "action_id": str(action.pk),
            "params": {"badge_type": "quest_master_10", "season": 3},
        },
    ).respond_with_json({"badge_id": "b-77", "status": "minted"}, status=201)

    result = CHANNELS["nft"].deliver(action)

    assert result == {"badge_id": "b-77", "status": "minted"}
    nft_service.check_assertions()
    request, _ = nft_service.log[0]
    assert request.headers["Content-Type"] == "application/json"


def test_nft_client_error_is_permanent(nft_service):
    nft_service.expect_request("/nft/badges", method="POST").respond_with_json(
        {"error": "unknown badge type"}, status=400
    )
    with pytest.raises(PermanentChannelError, match="400.*unknown badge type"):
        CHANNELS["nft"].deliver(_action("nft", params={"badge_type": "nope"}))


@pytest.mark.parametrize("status", [408, 429])
def test_nft_request_timeout_and_throttling_answers_are_transient(nft_service, status):
    nft_service.expect_request("/nft/badges").respond_with_data(
        "slow down", status=status, headers={"Retry-After": "7"}
    )
    with pytest.raises(TransientChannelError) as caught:
        CHANNELS["nft"].deliver(_action("nft", params={"badge_type": "b"}))
    assert str(status) in caught.value.message
    assert caught.value.retry_after == 7


def test_nft_server_error_is_transient(nft_service):
    nft_service.expect_request("/nft/badges").respond_with_data("upstream down", status=503)
    with pytest.raises(TransientChannelError, match="503"):
        CHANNELS["nft"].deliver(_action("nft", params={"badge_type": "b"}))


def _slow_handler(body: str, status: int):
    """Answers after 1.2 s; ``done`` is set once it has, so the (single-threaded) server is free again."""
    done = threading.Event()

    def handler(request):
        time.sleep(1.2)
        done.set()
        return Response(body, status=status, content_type="application/json")

    return handler, done


def test_nft_slow_answer_times_out_as_transient(nft_service):
    handler, done = _slow_handler(json.dumps({"ok": True}), 201)
    nft_service.expect_request("/nft/badges").respond_with_handler(handler)
    started = time.monotonic()
    with pytest.raises(TransientChannelError, match="timed out"):
        CHANNELS["nft"].deliver(_action("nft", params={"badge_type": "b"}))
    assert time.monotonic() - started < 1.1, "the read timeout from settings bounds the call"
    assert done.wait(5)


def test_nft_redirect_is_not_followed_and_is_permanent(nft_service):
    nft_service.expect_request("/nft/badges").respond_with_data(
        "", status=307, headers={"Location": nft_service.url_for("/elsewhere")}
    )
    nft_service.expect_request("/elsewhere").respond_with_json({"stolen": True})
    with pytest.raises(PermanentChannelError, match="redirect"):
        CHANNELS["nft"].deliver(_action("nft", params={"badge_type": "b"}))
    assert [request.path for request, _ in nft_service.log] == ["/nft/badges"]


@pytest.mark.parametrize(
    "body, content_type",
    [
        ("<html>ok</html>", "text/html"),
        ("[1, 2]", "application/json"),
        ("", "application/json"),
        ("{bad", "application/json"),
    ],
)
def test_nft_success_without_a_json_object_is_transient(nft_service, body, content_type):
    nft_service.expect_request("/nft/badges").respond_with_data(body, status=200, content_type=content_type)
    with pytest.raises(TransientChannelError, match="without a JSON object"):
        CHANNELS["nft"].deliver(_action("nft", params={"badge_type": "b"}))


def test_nft_without_badge_type_is_refused_before_sending(nft_service):
    with pytest.raises(PermanentChannelError, match="badge_type"):
        CHANNELS["nft"].deliver(_action("nft", params={}))
    assert nft_service.log == []


def test_unreachable_service_is_transient(settings):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.NFT_SERVICE_URL = f"http://127.0.0.1:{port}"
    with pytest.raises(TransientChannelError, match="unreachable"):
        CHANNELS["nft"].deliver(_action("nft", params={"badge_type": "b"}))


def test_invalid_url_counts_as_not_configured(settings):
    settings.NFT_SERVICE_URL = "nft-service-without-scheme"
    with pytest.raises(ChannelNotConfigured, match="invalid"):
        CHANNELS["nft"].deliver(_action("nft", params={"badge_type": "b"}))


# --- token gateway ---------------------------------------------------------------------------


def test_gateway_payout_is_posted_with_bearer_token_and_idempotency_key(gateway):
    action = _action("g2a_offchain", target_user_id="partner-9", amount=120, params={"currency": "G2A"})
    gateway.expect_oneshot_request(
        "/g2a/payouts",
        method="POST",
        headers={"Authorization": "Bearer g2a-secret", "Idempotency-Key": str(action.pk)},
        json={"user_id": "partner-9", "amount": 120, "action_id": str(action.pk), "params": {"currency": "G2A"}},
    ).respond_with_json({"payout_id": "p-1"}, status=200)

    assert CHANNELS["g2a_offchain"].deliver(action) == {"payout_id": "p-1"}
    gateway.check_assertions()


def test_gateway_client_error_is_permanent(gateway):
    gateway.expect_request("/g2a/payouts").respond_with_json({"error": "no wallet"}, status=422)
    with pytest.raises(PermanentChannelError, match="422"):
        CHANNELS["g2a_offchain"].deliver(_action("g2a_offchain", amount=5))


def test_gateway_server_error_is_transient(gateway):
    gateway.expect_request("/g2a/payouts").respond_with_data("bad gateway", status=502)
    with pytest.raises(TransientChannelError, match="502"):
        CHANNELS["g2a_offchain"].deliver(_action("g2a_offchain", amount=5))


def test_gateway_slow_answer_times_out_as_transient(gateway):
    handler, done = _slow_handler("{}", 200)
    gateway.expect_request("/g2a/payouts").respond_with_handler(handler)
    with pytest.raises(TransientChannelError, match="timed out"):
        CHANNELS["g2a_offchain"].deliver(_action("g2a_offchain", amount=5))
    assert done.wait(5)


def test_gateway_redirect_is_permanent(gateway):
    gateway.expect_request("/g2a/payouts").respond_with_data("", status=302, headers={"Location": "http://x/"})
    with pytest.raises(PermanentChannelError, match="redirect"):
        CHANNELS["g2a_offchain"].deliver(_action("g2a_offchain", amount=5))


def test_gateway_malformed_success_is_transient(gateway):
    gateway.expect_request("/g2a/payouts").respond_with_data('"done"', status=201, content_type="application/json")
    with pytest.raises(TransientChannelError, match="without a JSON object"):
        CHANNELS["g2a_offchain"].deliver(_action("g2a_offchain", amount=5))


# --- answers the database could not keep as they came ----------------------------------------


def test_an_answer_with_characters_the_database_cannot_store_is_kept_with_them_replaced(gateway):
    """A NUL or a lone surrogate in a JSON string (keys too): jsonb refuses both, so the payout that
    happened would otherwise leave no storable outcome."""
    body = '{"payout_id": "p\\u0000x", "note\\ud800": ["a\\udfffb", {"n": 1}]}'
    gateway.expect_request("/g2a/payouts").respond_with_data(body, status=201, content_type="application/json")

    result = CHANNELS["g2a_offchain"].deliver(_action("g2a_offchain", amount=5))

    assert result == {"payout_id": "p\ufffdx", "note\ufffd": ["a\ufffdb", {"n": 1}]}


@pytest.mark.parametrize("depth", [40, 5000])
def test_an_answer_object_nested_too_deep_is_kept_as_a_notice_with_an_excerpt(gateway, depth):
    body = '{"a": ' * depth + "1" + "}" * depth
    gateway.expect_request("/g2a/payouts").respond_with_data(body, status=201, content_type="application/json")

    result = CHANNELS["g2a_offchain"].deliver(_action("g2a_offchain", amount=5))

    assert result["not_kept"] == "The answer was nested deeper than 32 levels."
    assert result["excerpt"].startswith('{"a": {"a":') and len(result["excerpt"]) <= 300


def test_an_answer_array_nested_too_deep_is_no_json_object(gateway):
    gateway.expect_request("/g2a/payouts").respond_with_data("[" * 5000 + "]" * 5000, status=201)
    with pytest.raises(TransientChannelError, match="without a JSON object"):
        CHANNELS["g2a_offchain"].deliver(_action("g2a_offchain", amount=5))


def test_an_error_answer_is_quoted_with_what_the_database_cannot_store_replaced(gateway):
    gateway.expect_request("/g2a/payouts").respond_with_data(b"down\x00for \xed\xa0\x80 maintenance", status=503)
    with pytest.raises(TransientChannelError) as raised:
        CHANNELS["g2a_offchain"].deliver(_action("g2a_offchain", amount=5))
    assert "\x00" not in raised.value.message and "down\ufffdfor" in raised.value.message
    assert raised.value.message.encode("utf-8")


# --- configuration -----------------------------------------------------------------------------


def test_channel_status_reports_which_channels_are_configured(settings):
    settings.NFT_SERVICE_URL = ""
    settings.G2A_GATEWAY_URL = "http://127.0.0.1:9/"
    assert channel_status() == {"points": True, "nft": False, "g2a_offchain": True}
    assert channel_problems() == {"nft": "NFT_SERVICE_URL is not configured"}


# --- points ------------------------------------------------------------------------------------


@pytest.fixture
def stored_action(db, make_rule):
    rule = make_rule("quest_points", "quest.completed", [{"target": "actor", "reward_type": "points", "amount": "40"}])
    event = EconomicEvent.objects.create(
        source_service="quest_service", external_id="q-1", event_type="quest.completed", actor_user_id="alice",
        payload_hash="x" * 64, status=EconomicEvent.Status.PROCESSED,
    )  # fmt: skip
    return RewardAction.objects.create(
        event=event, rule=rule, rule_code=rule.code, rule_version=rule.version, target_user_id="alice",
        reward_type="points", amount=40, status=RewardAction.Status.PENDING,
    )  # fmt: skip


def test_points_channel_credits_the_ledger_once_under_the_action_id(stored_action, settings):
    channel = CHANNELS["points"]

    first = channel.deliver_many([stored_action])[stored_action.pk]
    again = channel.deliver_many([stored_action])[stored_action.pk]

    txn = Transaction.objects.get(source=settings.CONNECT_LEDGER_SOURCE, external_id=str(stored_action.pk))
    assert txn.kind == Transaction.Kind.CREDIT and txn.amount == 40
    assert txn.reason == "reward:quest_points"
    assert txn.metadata["event_id"] == str(stored_action.event_id)
    assert txn.metadata["rule"] == "quest_points" and txn.metadata["rule_version"] == stored_action.rule_version
    assert first == {"transaction_id": str(txn.pk), "balance": 40, "held": 0, "available": 40, "replayed": False}
    assert again == {**first, "replayed": True}
    assert account_totals(user_id="alice")["balance"] == 40


def test_points_channel_refuses_a_conflicting_ledger_entry(stored_action, settings):
    from points.services import account_credit

    account_credit(
        source=settings.CONNECT_LEDGER_SOURCE, external_id=str(stored_action.pk), user_id="mallory", amount=1
    )
    refused = CHANNELS["points"].deliver_many([stored_action])[stored_action.pk]
    assert isinstance(refused, PermanentChannelError) and "idempotency_conflict" in refused.message
    assert account_totals(user_id="alice")["balance"] == 0


def test_channels_are_a_plain_mapping_of_reward_type_to_channel():
    assert {reward_type: channel.reward_type for reward_type, channel in CHANNELS.items()} == {
        "points": "points",
        "nft": "nft",
        "g2a_offchain": "g2a_offchain",
    }


def test_an_http_channel_sends_a_batch_concurrently_and_one_timeout_fails_only_its_action(
    threaded_httpserver, settings
):
    nft_service = threaded_httpserver
    settings.NFT_SERVICE_URL = nft_service.url_for("/nft")
    settings.CHANNEL_CONCURRENCY = 4
    settings.CHANNEL_READ_TIMEOUT_SECONDS = 1.5
    slow_badge = "slow"

    def answer(request):
        body = json.loads(request.data)
        time.sleep(3 if body["badge_type"] == slow_badge else 0.5)
        return Response(json.dumps({"badge": body["action_id"]}), content_type="application/json")

    nft_service.expect_request("/nft/badges").respond_with_handler(answer)
    actions = [_action("nft", params={"badge_type": "b"}) for _ in range(3)]
    slow = _action("nft", params={"badge_type": slow_badge})

    started = time.monotonic()
    outcomes = CHANNELS["nft"].deliver_many([*actions, slow])
    elapsed = time.monotonic() - started

    assert elapsed < 2.5  # four requests at once: the slowest bounds the batch, not their sum
    assert {pk: outcome for pk, outcome in outcomes.items() if pk != slow.pk} == {
        action.pk: {"badge": str(action.pk)} for action in actions
    }
    assert isinstance(outcomes[slow.pk], TransientChannelError) and "timed out" in outcomes[slow.pk].message
