"""Dispatch under faults, with real Celery workers and Redis: a killed worker, a flushed broker, a
channel that keeps failing, and locked rewards released by an upgrade. Every reward is paid exactly once."""

from collections import Counter

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from connect.models import EconomicEvent, RewardAction
from connect.services import event_ingest
from connect.staff import reward_action_retry
from points.models import Transaction
from points.selectors import account_totals
from rules.services import rule_save_from_dict

from .conftest import wait_for
from .helpers import assert_ledger_ok, credits_per_action

Status = RewardAction.Status

pytestmark = pytest.mark.slow


def _rule(code: str, event_type: str, rewards: list[dict], condition: str = "") -> None:
    data = {
        "code": code, "name": code, "event_type": event_type, "condition": condition, "priority": 100,
        "is_active": True, "stop_processing": False, "valid_from": None, "valid_until": None,
        "rewards": [{"params": {}, "lock_condition": "", "max_per_target": None, **line} for line in rewards],
    }  # fmt: skip
    rule_save_from_dict(data=data)


def _quest_rule() -> None:
    _rule("quest_points", "quest.completed", [
        {"target": "actor", "reward_type": "points", "amount": "context.base_reward_points"},
        {"target": "primary_subject", "reward_type": "points", "amount": "floor(context.base_reward_points / 2)"},
    ])  # fmt: skip


def _ingest_quests(count: int, prefix: str) -> dict[str, int]:
    """Post ``count`` quest events (each pays the player and the author); returns the expected balances."""
    expected: Counter = Counter()
    for index in range(count):
        player, author, points = f"player-{index % 5}", f"author-{index % 3}", 10 + index
        result = event_ingest(
            client_name="quest_service",
            data={
                "external_id": f"{prefix}-{index}", "event_type": "quest.completed",
                "actor_user_id": player, "primary_subject_user_id": author,
                "context": {"base_reward_points": points},
            },
        )  # fmt: skip
        assert result.event.status == "processed"
        expected[player] += points
        expected[author] += points // 2
    return dict(expected)


def _statuses() -> Counter:
    return Counter(RewardAction.objects.values_list("status", flat=True))


def _all_completed(total: int):
    return lambda: RewardAction.objects.filter(status=Status.COMPLETED).count() == total


def _assert_paid_exactly_once(expected_balances: dict[str, int]) -> None:
    """Each completed points action has exactly one ledger credit, any other none; balances are exact."""
    actions = dict(RewardAction.objects.filter(reward_type="points").values_list("pk", "status"))
    counts = credits_per_action(actions)
    wrong = {
        pk: (status, counts[str(pk)])
        for pk, status in actions.items()
        if counts[str(pk)] != (1 if status == Status.COMPLETED else 0)
    }
    assert not wrong, wrong
    assert Transaction.objects.count() == sum(counts.values())
    for user_id, balance in expected_balances.items():
        assert account_totals(user_id=user_id)["balance"] == balance, user_id
    assert_ledger_ok()


# A record of "completed" that takes 0.3 s: a worker killed then has credited the ledger but not yet
# recorded it, the window in which a careless re-run would pay twice. (With the server checking the
# client connection while it sleeps, the record of a killed worker is rolled back, as it would be
# had the crash come a moment before the statement was sent.)
SLOW_COMPLETION_SQL = """
CREATE OR REPLACE FUNCTION fault_slow_completion() RETURNS trigger AS $$
BEGIN PERFORM pg_sleep(0.3); RETURN NEW; END $$ LANGUAGE plpgsql;
CREATE TRIGGER fault_slow_completion BEFORE UPDATE ON connect_rewardaction
FOR EACH ROW WHEN (NEW.status = 'completed') EXECUTE FUNCTION fault_slow_completion();
"""
DROP_SLOW_COMPLETION_SQL = """
DROP TRIGGER IF EXISTS fault_slow_completion ON connect_rewardaction;
DROP FUNCTION IF EXISTS fault_slow_completion();
"""


@pytest.fixture
def slow_completion(transactional_db):
    with connection.cursor() as cursor:
        cursor.execute(SLOW_COMPLETION_SQL)

    def remove():
        with connection.cursor() as cursor:
            cursor.execute(DROP_SLOW_COMPLETION_SQL)

    yield remove
    remove()


def _completions_in_flight() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND state = 'active' AND wait_event = 'PgSleep' AND query ILIKE 'UPDATE \"connect_rewardaction\"%%'"
        )
        return cursor.fetchone()[0]


def test_worker_killed_mid_burst_every_action_completes_and_is_paid_once(start_worker, broker, slow_completion):
    _quest_rule()
    # Batches of four, so the burst takes several and the kill lands while one is being recorded.
    first = start_worker(env={"PGOPTIONS": "-c client_connection_check_interval=50", "DISPATCH_BATCH_SIZE": "4"})
    expected = _ingest_quests(20, "burst")
    total = RewardAction.objects.count()
    assert total == 40

    wait_for(
        lambda: _statuses()[Status.COMPLETED] >= 4 and _completions_in_flight() >= 1,
        timeout=60, what="the burst to be under way with a completion in flight", workers=[first],
    )  # fmt: skip
    first.kill()

    wait_for(lambda: _completions_in_flight() == 0, timeout=10, what="the killed worker's statements to end")
    credited = set(Transaction.objects.values_list("external_id", flat=True))
    unrecorded = list(
        RewardAction.objects.exclude(status=Status.COMPLETED).filter(pk__in=credited).values_list("pk", "status")
    )
    assert unrecorded, "the kill must land between a ledger credit and its record"
    assert {status for _, status in unrecorded} == {Status.DISPATCHED}
    left = _statuses()
    assert left[Status.COMPLETED] < total, left

    slow_completion()  # the replacement runs at full speed
    second = start_worker(beat=True)  # its beat runs the sweeper every second
    wait_for(_all_completed(total), timeout=90, what="every action to complete", workers=[second])

    _assert_paid_exactly_once(expected)
    rerun = RewardAction.objects.filter(pk__in=[pk for pk, _ in unrecorded])
    assert all(action.result["replayed"] and action.attempts == 2 for action in rerun), [
        (action.result, action.attempts) for action in rerun
    ]  # credited before the kill: the re-run got the ledger's original answer instead of paying again


def test_broker_flushed_while_actions_are_queued_the_sweeper_completes_them(start_worker, broker):
    _quest_rule()
    expected = _ingest_quests(12, "flush")
    total = RewardAction.objects.count()
    events = EconomicEvent.objects.count()
    assert 1 <= broker.queued() <= events, "at most one doorbell per event, however many actions it made"

    broker.flush()
    assert broker.queued() == 0

    worker = start_worker(beat=True)
    wait_for(_all_completed(total), timeout=60, what="the sweeper to bring every action to completed", workers=[worker])

    _assert_paid_exactly_once(expected)


def test_always_failing_channel_backs_off_then_fails_and_staff_retry_completes(
    start_worker, broker, scripted_service, settings
):
    _rule("badge_and_points", "quest.completed", [
        {"target": "actor", "reward_type": "nft", "amount": "1", "params": {"badge_type": "quest_master_10"}},
        {"target": "actor", "reward_type": "points", "amount": "15"},
    ])  # fmt: skip
    scripted_service.answer(503, '{"error": "maintenance"}')
    worker = start_worker(env={"NFT_SERVICE_URL": scripted_service.url, "NFT_SERVICE_TOKEN": "nft-token"})

    event = event_ingest(
        client_name="quest_service",
        data={"external_id": "badge-1", "event_type": "quest.completed", "actor_user_id": "hero", "context": {}},
    ).event
    badge = RewardAction.objects.get(event=event, reward_type="nft")
    points = RewardAction.objects.get(event=event, reward_type="points")

    wait_for(
        lambda: RewardAction.objects.filter(pk=badge.pk, status=Status.FAILED).exists(),
        timeout=60, what="the badge to fail after its attempts", workers=[worker],
    )  # fmt: skip
    badge.refresh_from_db()
    assert badge.attempts == 4 and "503" in badge.last_error and "gave up after 4 attempts" in badge.last_error
    points.refresh_from_db()
    assert points.status == Status.COMPLETED, "the other line of the event is not held up"
    assert account_totals(user_id="hero")["balance"] == 15

    times = [moment for moment, _, _ in scripted_service.calls]
    assert len(times) == 4
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    # Base 0.3 s doubling with equal jitter: at least 0.15, 0.3, 0.6 s; scheduled by countdown, not the
    # sweeper (no beat runs in this worker), so well within a few seconds each.
    for gap, floor in zip(gaps, [0.15, 0.3, 0.6], strict=True):
        assert floor - 0.02 <= gap <= floor * 2 + 1.5, gaps
    assert gaps[-1] > gaps[0], gaps

    scripted_service.answer(201, '{"badge_id": "b-42"}')
    staff = get_user_model().objects.create_user("ops", password="x", is_staff=True)
    reward_action_retry(action_id=badge.pk, user=staff)  # enqueued on commit, to the worker
    wait_for(
        lambda: RewardAction.objects.filter(pk=badge.pk, status=Status.COMPLETED).exists(),
        timeout=30, what="the retried badge to complete", workers=[worker],
    )  # fmt: skip
    badge.refresh_from_db()
    assert badge.attempts == 5 and badge.result == {"badge_id": "b-42"} and badge.last_error == ""
    assert len(scripted_service.calls) == 5
    assert {headers["Idempotency-Key"] for _, _, headers in scripted_service.calls} == {str(badge.pk)}
    assert {headers["Authorization"] for _, _, headers in scripted_service.calls} == {"Bearer nft-token"}
    assert_ledger_ok()


def test_locked_rewards_released_by_an_upgrade_are_dispatched_and_credited(start_worker, broker):
    _rule("sub_referral", "referral.subjoined", [
        {"target": "primary_subject", "reward_type": "points", "amount": "50", "lock_condition": "vip_or_pro"},
    ], condition="context.level == 2")  # fmt: skip
    _rule("welcome", "referral.joined", [{"target": "actor", "reward_type": "points", "amount": "5"}])
    worker = start_worker()

    for index, sponsor in enumerate(["vip-sponsor", "vip-sponsor", "pro-sponsor", "plain-sponsor"]):
        event_ingest(client_name="referral_service", data={
            "external_id": f"sub-{index}", "event_type": "referral.subjoined", "actor_user_id": f"recruit-{index}",
            "primary_subject_user_id": sponsor, "context": {"level": 2},
        })  # fmt: skip
    event_ingest(client_name="referral_service", data={
        "external_id": "join-1", "event_type": "referral.joined", "actor_user_id": "newbie", "context": {},
    })  # fmt: skip
    wait_for(
        lambda: RewardAction.objects.filter(target_user_id="newbie", status=Status.COMPLETED).exists(),
        timeout=30, what="the unlocked reward to be paid", workers=[worker],
    )  # fmt: skip
    assert set(RewardAction.objects.filter(rule_code="sub_referral").values_list("status", flat=True)) == {"locked"}
    assert account_totals(user_id="vip-sponsor")["balance"] == 0

    event_ingest(client_name="referral_service", data={
        "external_id": "up-1", "event_type": "referral.user_upgraded_to_vip", "actor_user_id": "vip-sponsor",
    })  # fmt: skip
    event_ingest(client_name="user_service", data={
        "external_id": "up-2", "event_type": "user.upgraded_to_pro", "actor_user_id": "pro-sponsor",
    })  # fmt: skip

    released = RewardAction.objects.filter(target_user_id__in=["vip-sponsor", "pro-sponsor"])
    assert released.count() == 3
    wait_for(
        lambda: released.filter(status=Status.COMPLETED).count() == 3,
        timeout=30, what="the released rewards to be paid", workers=[worker],
    )  # fmt: skip
    assert RewardAction.objects.get(target_user_id="plain-sponsor").status == Status.LOCKED
    _assert_paid_exactly_once({"vip-sponsor": 100, "pro-sponsor": 50, "plain-sponsor": 0, "newbie": 5})


def test_a_slow_http_call_in_a_mixed_batch_retries_while_the_others_complete(start_worker, broker, scripted_service):
    _rule("mixed", "quest.completed", [
        {"target": "actor", "reward_type": "points", "amount": "context.points"},
        {"target": "actor", "reward_type": "g2a_offchain", "amount": "2"},
    ])  # fmt: skip
    _rule("gold_badge", "quest.completed", [
        {"target": "actor", "reward_type": "nft", "amount": "1", "params": {"badge_type": "gold"}},
    ], condition="context.badge == 'gold'")  # fmt: skip
    _rule("slow_badge", "quest.completed", [
        {"target": "actor", "reward_type": "nft", "amount": "1", "params": {"badge_type": "slow"}},
    ], condition="context.badge == 'slow'")  # fmt: skip
    scripted_service.answer(201, '{"ok": true}')
    scripted_service.answer_slowly("slow", seconds=4, times=1)  # beyond the worker's 2 s read timeout
    expected = {}
    for index in range(6):
        event_ingest(client_name="quest_service", data={
            "external_id": f"mixed-{index}", "event_type": "quest.completed", "actor_user_id": f"hero-{index}",
            "context": {"points": 10 + index, "badge": "slow" if index == 3 else "gold"},
        })  # fmt: skip
        expected[f"hero-{index}"] = 10 + index
    worker = start_worker(env={"NFT_SERVICE_URL": scripted_service.url, "G2A_GATEWAY_URL": scripted_service.url})
    slow = RewardAction.objects.get(target_user_id="hero-3", reward_type="nft")

    others = RewardAction.objects.exclude(pk=slow.pk)
    wait_for(lambda: others.filter(status=Status.COMPLETED).count() == 17, timeout=60,
             what="every action but the slow one to complete", workers=[worker])  # fmt: skip
    wait_for(lambda: RewardAction.objects.filter(pk=slow.pk, status=Status.COMPLETED).exists(), timeout=60,
             what="the slow badge to complete on its retry", workers=[worker])  # fmt: skip
    slow.refresh_from_db()
    assert slow.attempts == 2 and slow.last_error == ""
    assert set(others.values_list("attempts", flat=True)) == {1}
    _assert_paid_exactly_once(expected)


def test_two_workers_drain_one_backlog_each_action_once_and_no_deadlock(start_worker, broker):
    _quest_rule()
    expected = _ingest_quests(150, "backlog")  # few users: the batches lock the same accounts
    total = RewardAction.objects.count()
    env = {"DISPATCH_BATCH_SIZE": "20"}
    workers = [start_worker(env=env), start_worker(env=env, beat=True)]

    wait_for(_all_completed(total), timeout=120, what="the backlog to be drained", workers=workers)

    _assert_paid_exactly_once(expected)
    assert set(RewardAction.objects.values_list("attempts", flat=True)) == {1}, "no action was delivered twice"
    assert not any("deadlock" in worker.log().lower() for worker in workers)
