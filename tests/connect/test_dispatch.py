"""Dispatch in-process: claiming, outcomes, backoff, the sweeper and the staff services."""

import threading
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone

from connect.channels import CHANNELS
from connect.channels import nft as nft_module
from connect.delivery import backoff_with_jitter, reward_action_dispatch
from connect.doorbell import reward_actions_sweep
from connect.models import RewardAction
from connect.staff import RewardActionStateError, reward_action_cancel, reward_action_retry
from connect.tasks import drain_reward_actions, sweep_reward_actions
from points.models import Transaction
from points.selectors import account_totals

from .faults.helpers import action_create, assert_ledger_ok, credits_per_action, event_create, rule_create

Status = RewardAction.Status


@pytest.fixture
def rule(db):
    return rule_create()


@pytest.fixture
def nft_down(httpserver, settings):
    """An NFT service that answers 503 to everything."""
    settings.NFT_SERVICE_URL = httpserver.url_for("")
    settings.NFT_SERVICE_TOKEN = "t"
    httpserver.expect_request("/badges").respond_with_data("maintenance", status=503)
    return httpserver


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_user("finance", password="x", is_staff=True)


def _reload(action) -> RewardAction:
    action.refresh_from_db()
    return action


# --- one run -------------------------------------------------------------------------------------


def test_points_action_is_credited_and_completed(rule):
    action = action_create(rule=rule, target="alice", amount=25)

    outcome = reward_action_dispatch(action_id=action.pk)

    action = _reload(action)
    assert outcome.status == Status.COMPLETED
    assert action.status == Status.COMPLETED and action.attempts == 1 and action.completed_at is not None
    txn = Transaction.objects.get(external_id=str(action.pk))
    assert action.result == {
        "transaction_id": str(txn.pk), "balance": 25, "held": 0, "available": 25, "replayed": False,
    }  # fmt: skip
    assert account_totals(user_id="alice")["balance"] == 25
    assert txn.metadata == {
        "reward_action_id": str(action.pk), "event_id": str(action.event_id), "event_type": "quest.completed",
        "source_service": "quest_service", "event_external_id": action.event.external_id, "rule": rule.code,
        "rule_version": rule.version,
    }  # fmt: skip
    assert_ledger_ok()


def test_second_run_of_a_completed_action_does_nothing(rule):
    action = action_create(rule=rule, amount=7)
    reward_action_dispatch(action_id=action.pk)

    outcome = reward_action_dispatch(action_id=str(action.pk))

    assert not outcome.ran
    assert _reload(action).attempts == 1
    assert credits_per_action([action.pk]) == {str(action.pk): 1}
    assert account_totals(user_id="alice")["balance"] == 7


@pytest.mark.parametrize("status", [Status.LOCKED, Status.CANCELLED, Status.FAILED, Status.COMPLETED])
def test_actions_not_pending_are_left_alone(rule, status):
    action = action_create(rule=rule, status=status)

    assert not reward_action_dispatch(action_id=action.pk).ran

    action = _reload(action)
    assert action.status == status and action.attempts == 0
    assert not Transaction.objects.exists()


def test_unknown_or_malformed_action_id_is_a_no_op(db):
    assert not reward_action_dispatch(action_id="00000000-0000-0000-0000-000000000000").ran
    assert not reward_action_dispatch(action_id="not-a-uuid").ran


def test_early_duplicate_run_waits_for_the_backoff(rule):
    action = action_create(rule=rule, next_attempt_at=timezone.now() + timedelta(minutes=5))

    assert not reward_action_dispatch(action_id=action.pk).ran
    assert _reload(action).status == Status.PENDING and not Transaction.objects.exists()


def test_a_redispatch_after_a_lost_record_pays_once(rule):
    """The worker credited and died before recording: the re-run gets the ledger's original answer."""
    action = action_create(rule=rule, amount=30)
    reward_action_dispatch(action_id=action.pk)
    RewardAction.objects.filter(pk=action.pk).update(status=Status.PENDING, completed_at=None, result={})

    reward_action_dispatch(action_id=action.pk)

    action = _reload(action)
    assert action.status == Status.COMPLETED and action.attempts == 2 and action.result["replayed"] is True
    assert action.result["balance"] == 30
    assert credits_per_action([action.pk]) == {str(action.pk): 1}
    assert account_totals(user_id="alice")["balance"] == 30


def test_unconfigured_channel_keeps_the_action_pending_without_burning_attempts(rule, settings):
    settings.NFT_SERVICE_URL = ""
    settings.SWEEPER_INTERVAL_SECONDS = 30
    event = event_create()
    badge = action_create(rule=rule, event=event, reward_type="nft", amount=1, params={"badge_type": "b"})
    points = action_create(rule=rule, event=event, amount=5)

    before = timezone.now()
    outcome = reward_action_dispatch(action_id=badge.pk)
    reward_action_dispatch(action_id=points.pk)

    badge = _reload(badge)
    assert outcome.status == Status.PENDING
    assert badge.status == Status.PENDING and badge.attempts == 0
    assert badge.last_error == "NFT_SERVICE_URL is not configured"
    assert badge.next_attempt_at >= before + timedelta(seconds=29)
    assert _reload(points).status == Status.COMPLETED, "the other lines of the event are not held up"


def test_transient_error_puts_the_action_back_to_pending_with_backoff(rule, nft_down, settings):
    settings.DISPATCH_RETRY_BASE_SECONDS = 10
    action = action_create(rule=rule, reward_type="nft", amount=1, params={"badge_type": "b"})

    before = timezone.now()
    outcome = reward_action_dispatch(action_id=action.pk)

    action = _reload(action)
    assert action.status == Status.PENDING and action.attempts == 1
    assert "503" in action.last_error and "maintenance" in action.last_error
    assert 5 <= outcome.retry_in <= 10
    assert before + timedelta(seconds=5) <= action.next_attempt_at <= timezone.now() + timedelta(seconds=10)


def test_retry_after_of_a_throttled_answer_is_honoured(rule, httpserver, settings):
    settings.NFT_SERVICE_URL = httpserver.url_for("")
    settings.DISPATCH_RETRY_BASE_SECONDS = 1
    httpserver.expect_request("/badges").respond_with_data("busy", status=429, headers={"Retry-After": "120"})
    action = action_create(rule=rule, reward_type="nft", amount=1, params={"badge_type": "b"})

    outcome = reward_action_dispatch(action_id=action.pk)

    assert outcome.retry_in == 120
    assert _reload(action).next_attempt_at >= timezone.now() + timedelta(seconds=115)


def test_transient_errors_end_in_failed_after_the_last_attempt(rule, nft_down, settings):
    settings.DISPATCH_MAX_ATTEMPTS = 3
    action = action_create(rule=rule, reward_type="nft", amount=1, params={"badge_type": "b"})

    statuses = []
    for _ in range(3):
        RewardAction.objects.filter(pk=action.pk).update(next_attempt_at=timezone.now())  # the backoff is over
        statuses.append(reward_action_dispatch(action_id=action.pk).status)

    action = _reload(action)
    assert statuses == [Status.PENDING, Status.PENDING, Status.FAILED]
    assert action.status == Status.FAILED and action.attempts == 3
    assert "gave up after 3 attempts" in action.last_error
    assert len(nft_down.log) == 3
    assert not reward_action_dispatch(action_id=action.pk).ran


def test_permanent_error_fails_at_once(rule, httpserver, settings):
    settings.NFT_SERVICE_URL = httpserver.url_for("")
    httpserver.expect_request("/badges").respond_with_json({"error": "unknown badge"}, status=404)
    action = action_create(rule=rule, reward_type="nft", amount=1, params={"badge_type": "b"})

    reward_action_dispatch(action_id=action.pk)

    action = _reload(action)
    assert action.status == Status.FAILED and action.attempts == 1 and "404" in action.last_error


def test_http_channel_result_is_the_receivers_answer(rule, httpserver, settings):
    settings.G2A_GATEWAY_URL = httpserver.url_for("/gw")
    httpserver.expect_request("/gw/payouts").respond_with_json({"payout_id": "p-9"}, status=201)
    action = action_create(rule=rule, reward_type="g2a_offchain", amount=12)

    reward_action_dispatch(action_id=action.pk)

    action = _reload(action)
    assert action.status == Status.COMPLETED and action.result == {"payout_id": "p-9"}


def test_a_payout_whose_answer_holds_a_nul_is_completed_with_its_answer_kept(rule, httpserver, settings):
    """The payout happened: the outcome is stored (the NUL replaced), not recorded as a failure."""
    settings.G2A_GATEWAY_URL = httpserver.url_for("/gw")
    httpserver.expect_request("/gw/payouts").respond_with_data(
        '{"payout_id": "p\\u0000x"}', status=201, content_type="application/json"
    )
    action = action_create(rule=rule, reward_type="g2a_offchain", amount=12)

    reward_action_dispatch(action_id=action.pk)

    action = _reload(action)
    assert action.status == Status.COMPLETED and action.result == {"payout_id": "p\ufffdx"}


def test_a_transient_error_whose_text_holds_a_nul_is_retried_not_failed(rule, httpserver, settings):
    settings.G2A_GATEWAY_URL = httpserver.url_for("/gw")
    httpserver.expect_request("/gw/payouts").respond_with_data(b"down\x00here", status=503)
    action = action_create(rule=rule, reward_type="g2a_offchain", amount=12)

    reward_action_dispatch(action_id=action.pk)

    action = _reload(action)
    assert action.status == Status.PENDING and action.attempts == 1
    assert action.last_error == "Token gateway answered 503: down\ufffdhere"


def test_unexpected_exception_in_a_channel_is_retried_not_stuck(rule, settings, monkeypatch):
    settings.NFT_SERVICE_URL = "http://127.0.0.1:9"

    def explode(self, action):
        raise RuntimeError("boom")

    monkeypatch.setattr(nft_module.NftChannel, "deliver", explode)
    action = action_create(rule=rule, reward_type="nft", amount=1, params={"badge_type": "b"})

    reward_action_dispatch(action_id=action.pk)

    action = _reload(action)
    assert action.status == Status.PENDING and action.attempts == 1
    assert action.last_error == "Unexpected error: RuntimeError: boom"


def test_an_unexpected_error_whose_text_holds_a_nul_is_retried_with_it_replaced(rule, settings, monkeypatch):
    """Every channel's error message is made storable where dispatch records it, not only the HTTP
    channels' excerpts of an answer."""
    settings.NFT_SERVICE_URL = "http://127.0.0.1:9"

    def explode(self, action):
        raise RuntimeError("bad\x00byte")

    monkeypatch.setattr(nft_module.NftChannel, "deliver", explode)
    action = action_create(rule=rule, reward_type="nft", amount=1, params={"badge_type": "b"})

    reward_action_dispatch(action_id=action.pk)

    action = _reload(action)
    assert action.status == Status.PENDING and action.attempts == 1
    assert action.last_error == "Unexpected error: RuntimeError: bad\ufffdbyte"


def test_outcome_of_a_run_that_was_given_up_on_does_not_overwrite_the_next_one(rule, settings, monkeypatch):
    """Run 1 hangs; the sweeper re-queues it and run 2 completes; run 1's late error is dropped."""
    settings.NFT_SERVICE_URL = "http://127.0.0.1:9"
    calls = []

    def deliver(self, action):
        calls.append(action.attempts)
        if len(calls) == 1:
            RewardAction.objects.filter(pk=action.pk).update(status=Status.PENDING)  # as the sweeper does
            assert reward_action_dispatch(action_id=action.pk).status == Status.COMPLETED
            raise RuntimeError("late failure of run 1")
        return {"badge_id": "b-1"}

    monkeypatch.setattr(nft_module.NftChannel, "deliver", deliver)
    action = action_create(rule=rule, reward_type="nft", amount=1, params={"badge_type": "b"})

    outcome = reward_action_dispatch(action_id=action.pk)

    action = _reload(action)
    assert calls == [1, 2]
    assert not outcome.ran
    assert action.status == Status.COMPLETED and action.attempts == 2 and action.result == {"badge_id": "b-1"}
    assert action.last_error == ""


@pytest.mark.django_db(transaction=True)
def test_a_row_another_run_holds_is_skipped():
    rule = rule_create()
    action = action_create(rule=rule)
    held, release = threading.Event(), threading.Event()

    def hold_the_row():
        with transaction.atomic():
            RewardAction.objects.select_for_update().get(pk=action.pk)
            held.set()
            release.wait(10)
        connection.close()

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    try:
        assert held.wait(10)
        assert not reward_action_dispatch(action_id=action.pk).ran
    finally:
        release.set()
        holder.join(10)
    assert _reload(action).status == Status.PENDING and not Transaction.objects.exists()
    assert reward_action_dispatch(action_id=action.pk).status == Status.COMPLETED


# --- tasks in eager mode -------------------------------------------------------------------------


def test_task_runs_the_dispatch(rule):
    action = action_create(rule=rule, amount=3)

    drain_reward_actions.delay([str(action.pk)])

    assert _reload(action).status == Status.COMPLETED


def test_eager_mode_leaves_a_retry_to_the_sweeper_instead_of_recursing(rule, nft_down):
    action = action_create(rule=rule, reward_type="nft", amount=1, params={"badge_type": "b"})

    drain_reward_actions.delay([str(action.pk)])

    action = _reload(action)
    assert action.status == Status.PENDING and action.attempts == 1
    assert len(nft_down.log) == 1


# --- backoff -------------------------------------------------------------------------------------


def test_backoff_doubles_with_jitter_and_is_capped(settings):
    settings.DISPATCH_RETRY_BASE_SECONDS = 5
    settings.DISPATCH_RETRY_MAX_SECONDS = 600
    for attempt, step in [(1, 5), (2, 10), (3, 20), (4, 40), (8, 600), (50, 600), (10_000, 600)]:
        delays = [backoff_with_jitter(attempt) for _ in range(200)]
        assert all(step / 2 <= delay <= step for delay in delays), (attempt, min(delays), max(delays))
        assert len({round(delay, 6) for delay in delays}) > 100, "jittered, not a fixed delay"


# --- sweeper -------------------------------------------------------------------------------------


def test_sweeper_re_enqueues_stale_due_actions_and_they_complete(rule, settings, django_capture_on_commit_callbacks):
    settings.SWEEPER_STALE_SECONDS = 60
    stale_pending = action_create(rule=rule, target="a", amount=1, age_seconds=120)
    stale_dispatched = action_create(
        rule=rule, target="b", amount=2, age_seconds=120, status=Status.DISPATCHED, attempts=1
    )
    fresh = action_create(rule=rule, target="c", amount=3, age_seconds=5)
    not_due = action_create(
        rule=rule, target="d", amount=4, age_seconds=120, next_attempt_at=timezone.now() + timedelta(minutes=1)
    )
    locked = action_create(rule=rule, target="e", amount=5, age_seconds=120, status=Status.LOCKED)
    failed = action_create(rule=rule, target="f", amount=6, age_seconds=120, status=Status.FAILED)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert reward_actions_sweep() == 2
    assert len(callbacks) == 1  # one doorbell for the batch

    assert _reload(stale_pending).status == Status.COMPLETED
    stale_dispatched = _reload(stale_dispatched)
    assert stale_dispatched.status == Status.COMPLETED and stale_dispatched.attempts == 2
    # The drain the doorbell starts delivers every due action, the fresh one too; never one not due.
    assert _reload(fresh).status == Status.COMPLETED
    for untouched, status in [(not_due, Status.PENDING), (locked, Status.LOCKED), (failed, Status.FAILED)]:
        assert _reload(untouched).status == status
    assert account_totals(user_id="a")["balance"] == 1 and account_totals(user_id="b")["balance"] == 2
    assert account_totals(user_id="d")["balance"] == 0


def test_sweeper_touches_what_it_re_enqueues_so_the_next_sweep_skips_it(rule, settings):
    settings.SWEEPER_STALE_SECONDS = 60
    action = action_create(rule=rule, age_seconds=120, status=Status.DISPATCHED)

    assert reward_actions_sweep() == 1  # the doorbell is rung on commit; this test never commits

    action = _reload(action)
    assert action.status == Status.PENDING
    assert action.updated_at > timezone.now() - timedelta(seconds=5)
    assert reward_actions_sweep() == 0


def test_sweeper_respects_its_limit(rule, settings):
    settings.SWEEPER_STALE_SECONDS = 1
    for index in range(5):
        action_create(rule=rule, target=f"u{index}", age_seconds=10)
    assert reward_actions_sweep(limit=3) == 3
    assert reward_actions_sweep(limit=3) == 2
    assert reward_actions_sweep(limit=3) == 0


@pytest.mark.django_db(transaction=True)
def test_sweeper_skips_rows_another_sweeper_holds(settings):
    settings.SWEEPER_STALE_SECONDS = 1
    settings.NFT_SERVICE_URL = ""
    rule = rule_create()
    actions = [action_create(rule=rule, target=f"u{i}", reward_type="nft", amount=1, age_seconds=10) for i in range(4)]
    held, release = threading.Event(), threading.Event()

    def hold_two():
        with transaction.atomic():
            list(RewardAction.objects.select_for_update().filter(pk__in=[actions[0].pk, actions[1].pk]))
            held.set()
            release.wait(10)
        connection.close()

    holder = threading.Thread(target=hold_two)
    holder.start()
    try:
        assert held.wait(10)
        assert reward_actions_sweep() == 2
    finally:
        release.set()
        holder.join(10)
    assert reward_actions_sweep() == 2, "the rows held before are swept once free; the others were touched"


def test_a_doorbell_the_broker_refuses_leaves_the_actions_for_the_next_sweep(
    rule, settings, monkeypatch, django_capture_on_commit_callbacks
):
    settings.SWEEPER_STALE_SECONDS = 1
    actions = [action_create(rule=rule, target=f"u{i}", amount=1, age_seconds=10) for i in range(2)]
    ring = drain_reward_actions.apply_async

    def refuse(*args, **kwargs):
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(drain_reward_actions, "apply_async", refuse)
    with django_capture_on_commit_callbacks(execute=True):
        assert reward_actions_sweep() == 2
    assert {_reload(action).status for action in actions} == {Status.PENDING}

    RewardAction.objects.update(updated_at=timezone.now() - timedelta(seconds=10))
    monkeypatch.setattr(drain_reward_actions, "apply_async", ring)
    with django_capture_on_commit_callbacks(execute=True):
        assert reward_actions_sweep() == 2
    assert {_reload(action).status for action in actions} == {Status.COMPLETED}


def test_sweep_task_and_command(rule, settings, django_capture_on_commit_callbacks, capsys):
    settings.SWEEPER_STALE_SECONDS = 1
    first = action_create(rule=rule, target="x", amount=4, age_seconds=10)
    with django_capture_on_commit_callbacks(execute=True):
        assert sweep_reward_actions.delay().get() == 1
    assert _reload(first).status == Status.COMPLETED

    action_create(rule=rule, target="y", amount=4, age_seconds=10)
    action_create(rule=rule, target="z", amount=4, age_seconds=10)
    call_command("sweep_reward_actions", "--limit", "1", "--all")
    assert "Re-enqueued 2 reward action(s)." in capsys.readouterr().out


# --- staff ---------------------------------------------------------------------------------------


def test_staff_retry_of_a_failed_action_dispatches_it_again(rule, staff, django_capture_on_commit_callbacks):
    action = action_create(rule=rule, amount=9, status=Status.FAILED, attempts=8, last_error="gateway down")

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        reward_action_retry(action_id=action.pk, user=staff)
    assert len(callbacks) == 1

    action = _reload(action)
    assert action.status == Status.COMPLETED and action.attempts == 9
    assert account_totals(user_id="alice")["balance"] == 9


@pytest.mark.parametrize(
    "status", [Status.PENDING, Status.LOCKED, Status.COMPLETED, Status.CANCELLED, Status.DISPATCHED]
)
def test_only_failed_actions_can_be_retried(rule, staff, status):
    action = action_create(rule=rule, status=status)
    with pytest.raises(RewardActionStateError, match="Only a failed"):
        reward_action_retry(action_id=action.pk, user=staff)
    assert _reload(action).status == status


@pytest.mark.parametrize("status", [Status.LOCKED, Status.PENDING, Status.FAILED])
def test_staff_cancel_records_who_and_why_and_nothing_is_sent(rule, staff, status):
    action = action_create(rule=rule, status=status)

    reward_action_cancel(action_id=action.pk, reason="  duplicate booking  ", user=staff)

    action = _reload(action)
    assert action.status == Status.CANCELLED
    assert action.cancel_reason == "duplicate booking" and action.cancelled_by == staff
    assert not reward_action_dispatch(action_id=action.pk).ran
    assert not Transaction.objects.exists()


@pytest.mark.parametrize("status", [Status.PENDING, Status.FAILED])
def test_cancel_refuses_a_points_action_an_earlier_attempt_already_paid(rule, staff, status):
    """A worker that stopped after the ledger committed leaves the action to the sweeper, which puts it
    back to pending: cancelled, it would stay paid for good. Dispatched again, it is completed once."""
    action = action_create(rule=rule, status=status, attempts=1, amount=7)
    CHANNELS["points"].deliver_many([action])  # the credit of the attempt whose outcome was never recorded
    posted = Transaction.objects.get(external_id=str(action.pk))

    with pytest.raises(RewardActionStateError, match="posted ledger transaction") as refused:
        reward_action_cancel(action_id=action.pk, reason="duplicate", user=staff)

    assert refused.value.details["transaction_id"] == str(posted.pk)
    assert _reload(action).status == status
    RewardAction.objects.filter(pk=action.pk).update(status=Status.PENDING, next_attempt_at=None)
    assert reward_action_dispatch(action_id=action.pk).status == Status.COMPLETED
    assert account_totals(user_id="alice")["balance"] == 7


def test_cancel_of_an_attempted_points_action_nothing_was_posted_for_goes_ahead(rule, staff):
    action = action_create(rule=rule, status=Status.PENDING, attempts=2)

    reward_action_cancel(action_id=action.pk, reason="duplicate", user=staff)

    assert _reload(action).status == Status.CANCELLED


@pytest.mark.parametrize("status", [Status.DISPATCHED, Status.COMPLETED, Status.CANCELLED])
def test_cancel_refuses_actions_in_flight_or_finished(rule, staff, status):
    action = action_create(rule=rule, status=status)
    with pytest.raises(RewardActionStateError, match="Only a locked, pending or failed"):
        reward_action_cancel(action_id=action.pk, reason="why", user=staff)
    assert _reload(action).status == status


def test_cancel_needs_a_reason_and_a_user(rule, staff):
    action = action_create(rule=rule)
    with pytest.raises(RewardActionStateError, match="reason"):
        reward_action_cancel(action_id=action.pk, reason="   ", user=staff)
    with pytest.raises(RewardActionStateError, match="staff user"):
        reward_action_cancel(action_id=action.pk, reason="why", user=None)
    assert _reload(action).status == Status.PENDING


def test_staff_services_report_an_unknown_action(db, staff):
    from config.api.errors import NotFound

    with pytest.raises(NotFound):
        reward_action_retry(action_id="00000000-0000-0000-0000-000000000000", user=staff)
    with pytest.raises(NotFound):
        reward_action_cancel(action_id="00000000-0000-0000-0000-000000000000", reason="x", user=staff)


def test_the_sweep_skips_and_logs_an_action_it_cannot_record_and_completes_the_others(
    rule, settings, django_capture_on_commit_callbacks, caplog, monkeypatch
):
    """A result the database refuses (a NUL character in jsonb, from a channel that does not replace
    it as the HTTP channels do) fails that one action, logged, instead of stopping the sweep's drain
    and leaving every action of it dispatched."""
    settings.SWEEPER_STALE_SECONDS = 1
    settings.NFT_SERVICE_URL = "http://127.0.0.1:9"
    monkeypatch.setattr(nft_module.NftChannel, "deliver", lambda self, action: {"note": "\x00"})
    poison = action_create(
        rule=rule, target="bad", reward_type="nft", amount=1, params={"badge_type": "b"}, age_seconds=10
    )
    others = [action_create(rule=rule, target=f"u{i}", amount=3, age_seconds=10) for i in range(3)]

    with django_capture_on_commit_callbacks(execute=True):
        assert reward_actions_sweep() == 4

    assert {_reload(action).status for action in others} == {Status.COMPLETED}
    poison = _reload(poison)
    assert poison.status == Status.FAILED and poison.last_error.startswith("The outcome could not be stored")
    assert "recorded as failed" in caplog.text
    assert all(account_totals(user_id=f"u{i}")["balance"] == 3 for i in range(3))
    assert_ledger_ok()
