"""Consecutive credits of a batch are posted together (``account_credits_post``), on PostgreSQL in
real transactions, and each still answers exactly what it alone would."""

import threading

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from points.batch import ledger_batch
from points.models import Lot, Transaction
from points.services import CreditIn, account_credit, account_credits_post

from .conftest import assert_ledger_ok, totals
from .test_api import post
from .test_concurrency import run_together

pytestmark = pytest.mark.django_db(transaction=True)


def credit_op(key: str, user: str, amount: int, **extra) -> dict:
    return {"op": "credit", "external_id": key, "user_id": user, "amount": amount, **extra}


def test_a_hundred_credits_to_a_hundred_users_with_a_refusal_and_a_replay(api):
    stored = post(api, "/internal/credit", {"external_id": "k-7", "user_id": "u-7", "amount": 8})
    assert stored.status_code == 201
    operations = [credit_op(f"k-{i}", f"u-{i}", i + 1) for i in range(100)]
    operations[3]["amount"] = 0  # refused: 400
    operations[50]["amount"] = 1  # key of another request: 409
    operations[50]["external_id"] = "k-7"

    with CaptureQueriesContext(connection) as queries:
        response = post(api, "/internal/batch", {"operations": operations})

    assert response.status_code == 200
    results = response.json()["results"]
    assert [item["status"] for item in results] == [
        400 if i == 3 else 409 if i == 50 else 200 if i == 7 else 201 for i in range(100)
    ]
    assert results[3]["body"]["error"]["code"] == "validation_error"
    assert results[50]["body"]["error"]["code"] == "idempotency_conflict"
    assert results[7]["body"] == stored.json()
    for i in set(range(100)) - {3, 7, 50}:
        body = results[i]["body"]
        assert body == {
            "transaction_id": body["transaction_id"], "user_id": f"u-{i}", "balance": i + 1, "held": 0,
            "available": i + 1, "amount": i + 1,
        }  # fmt: skip
        assert totals(f"u-{i}") == (i + 1, 0, i + 1)
    assert totals("u-3") == totals("u-50") == (0, 0, 0)
    assert totals("u-7") == (8, 0, 8)
    assert Transaction.objects.count() == Lot.objects.count() == 98
    # A few statements for the whole run, not a few per credit.
    assert len(queries) < 40, [query["sql"][:80] for query in queries]
    assert_ledger_ok()


def test_a_hundred_credits_to_one_user_each_answer_the_balance_after_it(api):
    post(api, "/internal/credit", {"external_id": "first", "user_id": "solo", "amount": 1000})
    operations = [credit_op(f"s-{i}", "solo", 1) for i in range(100)]
    operations[10] = {"op": "credit", "external_id": "first", "user_id": "solo", "amount": 1000}  # a replay
    operations[20] = {"op": "debit", "external_id": "d", "user_id": "solo", "amount": 5000}  # 422, splits the run
    operations[30] = credit_op("s-29", "solo", 1)  # the key of an earlier credit of the batch: a replay of it

    results = post(api, "/internal/batch", {"operations": operations}).json()["results"]

    statuses = [item["status"] for item in results]
    assert statuses[10] == statuses[30] == 200 and statuses[20] == 422
    assert results[20]["body"]["error"]["code"] == "insufficient_funds"
    assert results[10]["body"]["balance"] == 1000
    assert results[30]["body"] == results[29]["body"]
    performed = [i for i in range(100) if i not in (10, 20, 30)]
    assert all(statuses[i] == 201 for i in performed)
    assert [results[i]["body"]["balance"] for i in performed] == list(range(1001, 1001 + len(performed)))
    assert totals("solo") == (1000 + len(performed), 0, 1000 + len(performed))
    assert Lot.objects.filter(account__user_id="solo").count() == 1 + len(performed)
    assert_ledger_ok()


def test_an_atomic_batch_of_credits_names_its_first_refusal_and_writes_nothing(api):
    post(api, "/internal/credit", {"external_id": "taken", "user_id": "x", "amount": 1})
    operations = [credit_op(f"a-{i}", f"a-{i % 3}", 5) for i in range(20)]
    operations[12] = credit_op("taken", "x", 2)  # 409, found when the run is posted
    operations[15]["amount"] = -1  # 400, found when read: the 409 before it is still the first

    response = post(api, "/internal/batch", {"operations": operations, "atomic": True})

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "batch_operation_refused"
    assert error["details"]["index"] == 12 and error["details"]["status"] == 409
    assert Transaction.objects.count() == 1
    assert totals("a-0") == (0, 0, 0)
    assert_ledger_ok()


def test_batches_over_the_same_users_in_opposite_orders_do_not_deadlock():
    users = [f"hot-{i}" for i in range(30)]

    def batch(index: int):
        order = users if index % 2 else list(reversed(users))
        return ledger_batch(source="batcher", operations=[credit_op(f"b{index}-{user}", user, 1) for user in order])

    outcomes = run_together(batch, count=6)

    assert not [outcome for outcome in outcomes if isinstance(outcome, Exception)], outcomes
    assert all(item.status == 201 for outcome in outcomes for item in outcome)
    assert all(totals(user) == (6, 0, 6) for user in users)
    assert_ledger_ok()


def test_the_same_batch_posted_twice_at_once_posts_each_credit_once():
    """The second batch finds no key stored when it looks, then loses every one of them to the
    first: it posts nothing twice and answers each credit as the replay it is."""
    credits = [CreditIn(external_id=f"same-{i}", user_id=f"p-{i % 4}", amount=10) for i in range(40)]

    outcomes = run_together(lambda _: account_credits_post(source="batcher", credits=credits), count=2)

    assert not [outcome for outcome in outcomes if isinstance(outcome, Exception)], outcomes
    first, second = outcomes
    replayed = [[result.replayed for result in outcome] for outcome in outcomes]
    assert sorted(replayed) == [[False] * 40, [True] * 40]
    for one, other in zip(first, second, strict=True):
        assert one.transaction.pk == other.transaction.pk
    assert Transaction.objects.filter(source="batcher").count() == 40
    assert all(totals(f"p-{i}") == (100, 0, 100) for i in range(4))
    assert_ledger_ok()


def test_a_key_stored_meanwhile_is_answered_as_its_replay_and_the_others_are_posted():
    """Another request stores one of the batch's keys after the batch looked its keys up: the bulk
    insert finds it taken, and the credits are posted one by one instead (that one a replay)."""
    stored, release = threading.Event(), threading.Event()

    def other_request():
        try:
            with transaction.atomic():
                account_credit(source="batcher", external_id="late-1", user_id="late-b", amount=10)
                stored.set()
                release.wait(timeout=30)
        finally:
            connection.close()

    other = threading.Thread(target=other_request)
    other.start()
    assert stored.wait(timeout=30)
    threading.Timer(1.0, release.set).start()  # commit while the batch waits on the key
    credits = [CreditIn(external_id=f"late-{i}", user_id=f"late-{'ab'[i % 2]}", amount=10) for i in range(6)]

    outcomes = account_credits_post(source="batcher", credits=credits)
    other.join(timeout=30)

    assert [outcome.replayed for outcome in outcomes] == [False, True, False, False, False, False]
    assert Transaction.objects.filter(source="batcher").count() == 6
    assert totals("late-a") == (30, 0, 30) and totals("late-b") == (30, 0, 30)
    assert Lot.objects.filter(transaction__source="batcher").count() == 6
    assert_ledger_ok()


def test_a_credit_posted_in_a_run_stores_the_rows_it_alone_would(api):
    extra = {"reason": "quest réward", "metadata": {"quest": {"id": 42, "tags": ["a", None]}, "ok": True}}
    expiring = {**extra, "expires_at": "2099-01-31T10:00:00+02:00"}
    post(api, "/internal/credit", credit_op("alone-1", "alone", 7, **extra))
    post(api, "/internal/credit", credit_op("alone-2", "alone", 9, **expiring))
    results = post(
        api,
        "/internal/batch",
        {"operations": [credit_op("run-1", "run", 7, **extra), credit_op("run-2", "run", 9, **expiring)]},
    ).json()["results"]
    assert [item["status"] for item in results] == [201, 201]

    def stored(key: str) -> dict:
        txn = Transaction.objects.get(external_id=key)
        row = {
            field.attname: getattr(txn, field.attname)
            for field in Transaction._meta.concrete_fields
            if field.attname not in ("id", "external_id", "account_id", "created_at", "request_hash")
        }
        lot = Lot.objects.get(transaction=txn)
        legs = sorted((entry.part, entry.amount, entry.account.user_id) for entry in txn.entries.all())
        return {
            **row, "legs": [(part, amount, user and "user") for part, amount, user in legs],
            "lot": (lot.amount, lot.remaining, lot.expired_amount, lot.expires_at, lot.created_at == txn.created_at),
        }  # fmt: skip

    assert stored("run-1") == stored("alone-1") and stored("run-2") == stored("alone-2")
    # The same fingerprint as alone: each posted alone now is its replay.
    for key, amount, body in (("run-1", 7, extra), ("run-2", 9, expiring)):
        replay = post(api, "/internal/credit", credit_op(key, "run", amount, **body))
        assert replay.status_code == 200, replay.json()
    assert_ledger_ok()


def test_a_run_of_credits_opens_never_expiring_lots_when_points_do_not_expire(settings):
    settings.POINTS_EXPIRE_AFTER_DAYS = 0
    credits = [CreditIn(external_id=f"never-{i}", user_id="forever", amount=3) for i in range(3)]

    outcomes = account_credits_post(source="batcher", credits=credits)

    assert [outcome.transaction.balance_after for outcome in outcomes] == [3, 6, 9]
    assert (
        list(Lot.objects.filter(account__user_id="forever").values_list("expires_at", "remaining")) == [(None, 3)] * 3
    )
    assert_ledger_ok()


def test_stored_keys_are_looked_up_one_index_probe_each_however_stale_the_statistics():
    """A batch looks up its keys with one probe of the idempotency index per key. Thousands of rows of
    the source that the statistics do not know about yet (no ANALYZE since) must not turn the lookup
    into a scan of all of them."""
    from points.selectors import TRANSACTIONS_BY_KEY_SQL, transactions_by_key
    from points.statements import ledger_sql

    for index in range(3):
        account_credit(source="svc", external_id=f"old-{index}", user_id=f"u-{index}", amount=5)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE points_transaction")
    with transaction.atomic():
        with connection.cursor() as cursor:
            # Rows added after the ANALYZE, rolled back below: never committed, so the ledger's checks
            # at commit do not see these entry-less rows.
            cursor.execute(
                """
                INSERT INTO points_transaction (id, kind, source, external_id, request_hash, account_id, amount,
                                                reason, metadata, balance_after, held_after, created_at,
                                                reversed_amount, shortfall)
                SELECT gen_random_uuid(), 'credit', 'svc', 'bulk-' || n, '', account.id, 1, '', '{}', 1, 0, now(), 0, 0
                  FROM generate_series(1, 20000) AS n, (SELECT id FROM points_account WHERE user_id = 'u-0') AS account
                """
            )
        keys = ["old-1", "bulk-7", "bulk-19999", "missing", "old-2"]
        found = transactions_by_key("svc", keys)
        assert sorted(txn.external_id for txn in found) == ["bulk-19999", "bulk-7", "old-1", "old-2"]
        assert {txn.account.user_id for txn in found if txn.external_id.startswith("old-")} == {"u-1", "u-2"}
        assert transactions_by_key("other", keys) == []
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN " + ledger_sql(TRANSACTIONS_BY_KEY_SQL), [keys, "svc"])
            plan = "\n".join(row[0] for row in cursor.fetchall())
        transaction.set_rollback(True)
    assert "points_txn_idempotency" in plan, plan
    assert "external_id = key.external_id" in plan.replace("(", "").replace(")", "").replace("::text", ""), plan
    assert Transaction.objects.count() == 3


def test_keys_none_of_which_is_stored_cost_one_statement_and_stored_ones_come_with_their_account():
    from points.selectors import transactions_by_key

    account_credit(source="svc", external_id="kept", user_id="u-1", amount=5)
    with CaptureQueriesContext(connection) as queries:
        assert transactions_by_key("svc", ["new-1", "new-2"]) == []
    assert len(queries) == 1  # the common case of a batch: nothing to load

    with CaptureQueriesContext(connection) as queries:
        (found,) = transactions_by_key("svc", ["new-1", "kept"])
        assert (found.external_id, found.account.user_id, found.hold) == ("kept", "u-1", None)
    assert len(queries) == 2  # the keys, then the Transactions with their account and hold


def test_a_credit_writes_no_index_entry_that_another_index_or_a_null_makes_useless():
    """The account columns are indexed only as the lead of their composite indexes, and the hold and
    creator columns, null on nearly every row, only where they are set (migration points 0008)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('points_transaction', 'points_entry')"
        )
        indexes = dict(cursor.fetchall())
    single_column = {
        definition.split("(", 1)[1].rstrip(")") for name, definition in indexes.items() if "WHERE" not in definition
    }
    assert not {"account_id", "hold_id", "created_by_id"} & single_column, indexes
    assert indexes["points_txn_account_recent"].endswith("(account_id, created_at DESC)")
    assert indexes["points_entry_account_part"].endswith("(account_id, part)")
    assert indexes["points_txn_hold"].endswith("(hold_id) WHERE (hold_id IS NOT NULL)")
    assert indexes["points_txn_created_by"].endswith("(created_by_id) WHERE (created_by_id IS NOT NULL)")
