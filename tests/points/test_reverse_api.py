"""POST /internal/reverse and the lots / expiry fields of the account endpoints over HTTP (SPEC §9, §13)."""

from datetime import timedelta

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from points.models import Lot, ServiceClient, ServiceClientKey, Transaction

from .conftest import assert_ledger_ok, totals
from .test_api import assert_error, post

pytestmark = pytest.mark.django_db


def credit_over(api, amount: int, *, user_id: str = "alice", external_id: str = "c", **extra) -> dict:
    response = post(
        api, "/internal/credit", {"external_id": external_id, "user_id": user_id, "amount": amount, **extra}
    )
    assert response.status_code == 201, response.content
    return response.json()


def reverse_over(api, transaction_id, **body):
    return post(
        api,
        "/internal/reverse",
        {"external_id": body.pop("external_id", "r"), "transaction_id": transaction_id, **body},
    )


def test_a_credit_reversal_answers_201_then_replays_200_and_conflicts_409(api):
    original = credit_over(api, 100)

    response = reverse_over(api, original["transaction_id"], amount=40, reason="refund", metadata={"order": 9})

    assert response.status_code == 201
    body = response.json()
    txn = Transaction.objects.get(external_id="r")
    assert body == {
        "transaction_id": str(txn.pk), "user_id": "alice", "reverses": original["transaction_id"],
        "reversed": 40, "shortfall": 0, "balance": 60, "held": 0, "available": 60,
    }  # fmt: skip
    replay = reverse_over(api, original["transaction_id"], amount=40, reason="refund", metadata={"order": 9})
    assert (replay.status_code, replay.json()) == (200, body)
    conflict = reverse_over(api, original["transaction_id"], amount=41, reason="refund", metadata={"order": 9})
    assert assert_error(conflict, 409, "idempotency_conflict") == {"external_id": "r"}
    assert totals("alice") == (60, 0, 60)
    assert_ledger_ok()


def test_the_history_shows_the_reversal_and_what_it_reverses(api):
    original = credit_over(api, 100)
    reversal = reverse_over(api, original["transaction_id"]).json()

    items = api.get("/internal/accounts/alice/transactions").json()["results"]

    assert [(item["kind"], item["reverses"]) for item in items] == [
        ("reversal", original["transaction_id"]),
        ("credit", None),
    ]
    assert items[0]["transaction_id"] == reversal["transaction_id"]
    assert (items[0]["amount"], items[0]["balance_after"]) == (100, 0)


def test_allow_partial_answers_the_shortfall_over_http(api):
    original = credit_over(api, 100)
    assert post(api, "/internal/debit", {"external_id": "d", "user_id": "alice", "amount": 75}).status_code == 201

    refused = reverse_over(api, original["transaction_id"], external_id="strict")
    assert assert_error(refused, 422, "insufficient_funds") == {"available": 25, "requested": 100}
    response = reverse_over(api, original["transaction_id"], allow_partial=True)

    assert response.status_code == 201
    assert (response.json()["reversed"], response.json()["shortfall"], response.json()["balance"]) == (25, 75, 0)
    assert not Transaction.objects.filter(external_id="strict").exists()
    assert_ledger_ok()


def test_a_debit_or_capture_reversal_gives_points_back(api):
    credit_over(api, 100)
    spent = post(api, "/internal/debit", {"external_id": "d", "user_id": "alice", "amount": 60}).json()
    held = post(api, "/internal/hold", {"external_id": "h", "user_id": "alice", "amount": 30}).json()
    captured = post(api, "/internal/capture", {"external_id": "cap", "hold_id": held["hold_id"]}).json()

    assert reverse_over(api, spent["transaction_id"], external_id="r1").json()["balance"] == 70
    response = reverse_over(api, captured["transaction_id"], external_id="r2", amount=10)

    assert (response.status_code, response.json()["reversed"], response.json()["balance"]) == (201, 10, 80)
    assert_ledger_ok()


def test_refusals_are_422_with_their_code_and_change_nothing(api, snapshot):
    original = credit_over(api, 100)
    held = post(api, "/internal/hold", {"external_id": "h", "user_id": "alice", "amount": 30}).json()
    before = snapshot()

    too_much = reverse_over(api, original["transaction_id"], amount=101)
    assert assert_error(too_much, 422, "reversal_exceeds_original") == {
        "transaction_id": original["transaction_id"], "original": 100, "reversed": 0, "requested": 101,
    }  # fmt: skip
    not_reversible = reverse_over(api, held["transaction_id"])
    assert assert_error(not_reversible, 422, "not_reversible")["kind"] == "hold"

    assert snapshot() == before


def test_another_clients_transaction_is_not_found(api, api_for):
    original = credit_over(api, 100)
    other = api_for("voucher_service")

    response = reverse_over(other, original["transaction_id"])

    assert assert_error(response, 404, "not_found") == {"transaction_id": original["transaction_id"]}
    assert totals("alice") == (100, 0, 100)


@pytest.mark.parametrize(
    "body",
    [
        {"transaction_id": "not-a-uuid"},
        {"transaction_id": 5},
        {"amount": 0},
        {"amount": "10"},
        {"allow_partial": "yes"},
        {"external_id": ""},
    ],
)
def test_invalid_input_is_a_400(api, body):
    original = credit_over(api, 100)
    response = post(
        api, "/internal/reverse", {"external_id": "r", "transaction_id": original["transaction_id"], **body}
    )
    assert assert_error(response, 400, "validation_error")
    assert totals("alice") == (100, 0, 100)


def test_the_scope_depends_on_what_is_reversed(api_for):
    full = api_for("quest_service")
    credit = credit_over(full, 100)
    spent = post(full, "/internal/debit", {"external_id": "d", "user_id": "alice", "amount": 10}).json()
    full.credentials()  # forget the full key; the same client gets narrower keys below
    client = ServiceClient.objects.get(name="quest_service")
    keys = {}
    for scopes in (["points:credit"], ["points:debit"], ["points:read"]):
        client.scopes = scopes
        client.save()
        _, keys[scopes[0]] = ServiceClientKey.objects.create_key(client=client, name=scopes[0])

    def as_scope(scope, transaction_id, external_id):
        client.scopes = [scope]
        client.save()
        full.credentials(HTTP_AUTHORIZATION=f"Api-Key {keys[scope]}")
        return reverse_over(full, transaction_id, external_id=external_id, amount=5)

    assert_error(as_scope("points:credit", credit["transaction_id"], "rev-a"), 403, "permission_denied")
    assert_error(as_scope("points:debit", spent["transaction_id"], "rev-b"), 403, "permission_denied")
    assert_error(as_scope("points:read", credit["transaction_id"], "rev-c"), 403, "permission_denied")
    assert as_scope("points:debit", credit["transaction_id"], "rev-d").status_code == 201
    assert as_scope("points:credit", spent["transaction_id"], "rev-e").status_code == 201
    assert totals("alice") == (90, 0, 90)


def test_a_credit_with_expires_at_opens_a_dated_lot_listed_soonest_first(api):
    soon = (timezone.now() + timedelta(days=2)).replace(microsecond=0)
    later = soon + timedelta(days=40)
    credit_over(api, 10, external_id="never")
    credit_over(api, 20, external_id="later", expires_at=later.isoformat())
    first = credit_over(api, 30, external_id="soon", expires_at=soon.isoformat().replace("+00:00", "Z"))

    response = api.get("/internal/accounts/alice/lots")

    assert response.status_code == 200
    results = response.json()["results"]
    assert [(lot["amount"], lot["remaining"]) for lot in results] == [(30, 30), (20, 20), (10, 10)]
    assert results[0]["transaction_id"] == first["transaction_id"]
    assert parse_datetime(results[0]["expires_at"]) == soon
    assert results[2]["expires_at"] is None
    lot = Lot.objects.get(transaction_id=first["transaction_id"])
    assert results[0]["lot_id"] == str(lot.pk)
    assert set(results[0]) == {"lot_id", "transaction_id", "amount", "remaining", "expires_at", "created_at"}

    account = api.get("/internal/accounts/alice").json()
    assert account["expiring_soon"] == 30
    assert account["next_expiry"]["amount"] == 30
    assert parse_datetime(account["next_expiry"]["expires_at"]) == soon


def test_the_lots_list_pages_with_a_cursor(api):
    for n in range(5):
        credit_over(api, n + 1, external_id=f"c{n}", expires_at=(timezone.now() + timedelta(days=n + 1)).isoformat())

    first = api.get("/internal/accounts/alice/lots?page_size=2").json()
    second = api.get(first["next"]).json()
    third = api.get(second["next"]).json()

    amounts = [lot["amount"] for page in (first, second, third) for lot in page["results"]]
    assert amounts == [1, 2, 3, 4, 5]
    assert third["next"] is None
    assert api.get("/internal/accounts/nobody/lots").json()["results"] == []


def test_a_credit_refuses_an_expiry_in_the_past_with_a_422(api):
    response = post(
        api,
        "/internal/credit",
        {"external_id": "c", "user_id": "alice", "amount": 5, "expires_at": "2001-01-01T00:00:00Z"},
    )
    assert assert_error(response, 422, "expiry_in_past") == {"expires_at": "2001-01-01T00:00:00+00:00"}
    assert not Transaction.objects.exists()
    assert post(api, "/internal/credit", {"external_id": "c", "user_id": "alice", "amount": 5}).status_code == 201


@pytest.mark.parametrize("expires_at", ["2099-01-01T00:00:00", "2099-01-01", 5, "soon", "2099-13-01T00:00:00Z"])
def test_a_credit_refuses_an_expiry_that_is_not_a_future_rfc3339_moment(api, expires_at):
    response = post(
        api, "/internal/credit", {"external_id": "c", "user_id": "alice", "amount": 5, "expires_at": expires_at}
    )
    assert list(assert_error(response, 400, "validation_error")) == ["expires_at"]
    assert not Transaction.objects.exists()
