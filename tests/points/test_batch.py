"""POST /internal/batch and the batch ledger service (SPEC §9 "Batch"): each operation exactly as alone."""

import pytest

from points.batch import BatchOperationRefused, ledger_batch
from points.models import Transaction

from .conftest import assert_ledger_ok, totals
from .test_api import assert_error, post

pytestmark = pytest.mark.django_db


def batch(api, operations, **extra):
    return post(api, "/internal/batch", {"operations": operations, **extra})


def single_answers(api, operations) -> list[tuple[int, dict]]:
    return [(r.status_code, r.json()) for r in (post(api, f"/internal/{op['op']}", op) for op in operations)]


def test_each_operation_answers_what_it_alone_would(api, api_for):
    """The same operations sent one by one by one client and as a batch by another give the same answers."""
    operations = [
        {"op": "credit", "external_id": "c1", "user_id": "alice", "amount": 100, "reason": "quest"},
        {"op": "debit", "external_id": "d1", "user_id": "alice", "amount": 30},
        {"op": "debit", "external_id": "d2", "user_id": "alice", "amount": 500},  # 422
        {"op": "credit", "external_id": "c1", "user_id": "alice", "amount": 100, "reason": "quest"},  # replay
        {"op": "credit", "external_id": "c1", "user_id": "alice", "amount": 99},  # 409
        {"op": "credit", "external_id": "c2", "user_id": "alice", "amount": 0},  # 400
        {"op": "hold", "external_id": "h1", "user_id": "alice", "amount": 20},
        {"op": "capture", "external_id": "x1", "hold_id": "00000000-0000-4000-8000-000000000000"},  # 404
    ]
    alone = single_answers(api, operations)

    response = batch(
        api_for("voucher_service"), [{**op, "user_id": "bob"} if "user_id" in op else op for op in operations]
    )

    assert response.status_code == 200
    results = response.json()["results"]
    assert [item["status"] for item in results] == [status for status, _ in alone] == [
        201, 201, 422, 200, 409, 400, 201, 404,
    ]  # fmt: skip
    for (status, body), item in zip(alone, results, strict=True):
        if status >= 400:
            assert item["body"]["error"]["code"] == body["error"]["code"]
        else:
            assert {
                k: v for k, v in item["body"].items() if k not in ("transaction_id", "user_id", "hold_id", "expires_at")
            } == {k: v for k, v in body.items() if k not in ("transaction_id", "user_id", "hold_id", "expires_at")}
    assert results[3]["body"] == results[0]["body"]  # a replay answers the original
    assert totals("bob") == totals("alice") == (70, 20, 50)
    assert_ledger_ok()


def test_a_batch_can_settle_and_reverse_what_it_placed_earlier_in_itself(api):
    first = batch(api, [{"op": "credit", "external_id": "c", "user_id": "alice", "amount": 100}]).json()["results"][0]
    held = batch(api, [{"op": "hold", "external_id": "h", "user_id": "alice", "amount": 40}]).json()["results"][0]

    response = batch(
        api,
        [
            {"op": "capture", "external_id": "cap", "hold_id": held["body"]["hold_id"], "amount": 10},
            {"op": "reverse", "external_id": "r", "transaction_id": first["body"]["transaction_id"], "amount": 50},
            {"op": "release", "external_id": "rel", "hold_id": held["body"]["hold_id"]},  # captured already
        ],
    )

    assert [item["status"] for item in response.json()["results"]] == [201, 201, 422]
    assert response.json()["results"][2]["body"]["error"]["code"] == "hold_not_active"
    assert totals("alice") == (40, 0, 40)
    assert_ledger_ok()


def test_an_atomic_batch_is_all_or_nothing(api, snapshot):
    post(api, "/internal/credit", {"external_id": "fund", "user_id": "alice", "amount": 50})
    before = snapshot()

    response = batch(
        api,
        [
            {"op": "credit", "external_id": "a1", "user_id": "bob", "amount": 10},
            {"op": "debit", "external_id": "a2", "user_id": "alice", "amount": 20},
            {"op": "debit", "external_id": "a3", "user_id": "alice", "amount": 40},  # 30 left: refused
        ],
        atomic=True,
    )

    details = assert_error(response, 422, "batch_operation_refused")
    assert (details["index"], details["status"], details["error"]["code"]) == (2, 422, "insufficient_funds")
    assert snapshot() == before  # nothing written, no external_id used up
    ok = batch(
        api,
        [
            {"op": "credit", "external_id": "a1", "user_id": "bob", "amount": 10},
            {"op": "debit", "external_id": "a2", "user_id": "alice", "amount": 20},
        ],
        atomic=True,
    )
    assert [item["status"] for item in ok.json()["results"]] == [201, 201]
    replay = batch(api, [{"op": "credit", "external_id": "a1", "user_id": "bob", "amount": 10}], atomic=True)
    assert replay.json()["results"][0]["status"] == 200
    assert totals("alice") == (30, 0, 30)
    assert_ledger_ok()


def test_each_operation_needs_its_own_scope(api_for):
    debit_only = api_for("shop", scopes=["points:debit"])

    response = batch(
        debit_only,
        [
            {"op": "credit", "external_id": "x", "user_id": "bob", "amount": 1},
            {"op": "debit", "external_id": "y", "user_id": "bob", "amount": 1},
        ],
    )

    assert response.status_code == 200
    first, second = response.json()["results"]
    assert (first["status"], first["body"]["error"]["code"]) == (403, "permission_denied")
    assert first["body"]["error"]["message"] == "This API key lacks the scope 'points:credit'."
    assert (second["status"], second["body"]["error"]["code"]) == (422, "insufficient_funds")
    assert not Transaction.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"operations": []},
        {"operations": {}},
        {"operations": [{"op": "credit"}] * 1001},
        {"operations": [{"op": "credit"}], "atomic": "yes"},
        {"operations": [{"op": "teleport", "external_id": "x"}]},
        {"operations": ["credit"]},
        {"operations": [{"external_id": "x"}]},
    ],
)
def test_a_malformed_batch_is_a_400(api, body):
    assert_error(post(api, "/internal/batch", body), 400, "validation_error")


def test_a_thousand_operations_are_accepted(api):
    operations = [
        {"op": "credit", "external_id": f"c{n}", "user_id": f"user-{n % 10}", "amount": 1} for n in range(1000)
    ]
    response = batch(api, operations)
    assert response.status_code == 200
    assert [item["status"] for item in response.json()["results"]] == [201] * 1000
    assert totals("user-3") == (100, 0, 100)
    assert_ledger_ok()


def test_the_service_runs_for_in_process_callers_with_every_scope():
    results = ledger_batch(
        source="connect",
        operations=[
            {"op": "credit", "external_id": "a", "user_id": "alice", "amount": 5},
            {"op": "debit", "external_id": "b", "user_id": "alice", "amount": 6},
        ],
    )
    assert [item.status for item in results] == [201, 422]
    with pytest.raises(BatchOperationRefused) as refused:
        ledger_batch(
            source="connect",
            operations=[
                {"op": "credit", "external_id": "c", "user_id": "alice", "amount": 5},
                {"op": "debit", "external_id": "d", "user_id": "alice", "amount": 50},
            ],
            atomic=True,
        )
    assert refused.value.details["index"] == 1
    assert totals("alice") == (5, 0, 5)
    assert not Transaction.objects.filter(external_id="c").exists()
