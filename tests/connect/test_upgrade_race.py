"""A VIP/PRO upgrade and a new locked action for the same user, at the same time (real threads, PostgreSQL).

The upgrade releases the user's locked actions it can see. Without ordering, an event planned while
the upgrade runs reads the old profile, stores its action ``locked`` after the release, and the
action stays locked until some later upgrade. ``connect.profiles.upgrade_lock`` orders the two: each
test holds one side open at its riskiest point and checks that the other waits and that the
action ends ``pending`` either way.
"""

import threading

import pytest
from django.db import connections

from connect import profiles, services
from connect.models import EconomicEvent, RewardAction, UserProfile
from connect.services import event_ingest

pytestmark = pytest.mark.django_db(transaction=True)

USER = "u-upgrading"
WAIT = 1.5  # how long the other side gets to (wrongly) finish while the first is held open


@pytest.fixture
def locked_reward_rule(make_rule):
    return make_rule(
        "vip_task_bonus", "task.done", [{"target": "actor", "reward_type": "points", "amount": "10",
                                         "lock_condition": "vip"}],
    )  # fmt: skip


def _task_done(external_id="task-1") -> dict:
    return {"external_id": external_id, "event_type": "task.done", "actor_user_id": USER, "context": {}}


def _upgrade() -> dict:
    return {"external_id": "upgrade-1", "event_type": "user.upgraded_to_vip", "actor_user_id": USER, "context": {}}


class _Side(threading.Thread):
    """One ingest in its own thread and database connection."""

    def __init__(self, source: str, data: dict):
        super().__init__(daemon=True)
        self.source, self.data, self.result, self.error = source, data, None, None

    def run(self):
        try:
            self.result = event_ingest(client_name=self.source, data=self.data)
        except Exception as exc:  # pragma: no cover - reported by the assertions
            self.error = exc
        finally:
            connections.close_all()


def _race(monkeypatch, held: _Side, hold_after: tuple, other: _Side, *, wait: float = WAIT) -> bool:
    """Run ``held`` until it returns from ``hold_after`` (module, function name), keep it there
    (its transaction open) while ``other`` runs for up to ``wait`` seconds, then let both finish.
    Returns whether ``other`` finished while ``held`` was still open."""
    module, name = hold_after
    original, paused, resume = getattr(module, name), threading.Event(), threading.Event()

    def hold(*args, **kwargs):
        result = original(*args, **kwargs)
        if threading.current_thread() is held:
            paused.set()
            assert resume.wait(30), "the test never resumed the held side"
        return result

    monkeypatch.setattr(module, name, hold)
    held.start()
    assert paused.wait(30), f"{name} was not reached"
    other.start()
    other.join(wait)
    finished_while_held = not other.is_alive()
    resume.set()
    held.join(30)
    other.join(30)
    assert (held.error, other.error) == (None, None)
    return finished_while_held


@pytest.mark.usefixtures("locked_reward_rule")
def test_an_upgrade_waits_for_an_event_that_is_storing_a_locked_action(monkeypatch):
    event_side, upgrade_side = _Side("task_service", _task_done()), _Side("user_service", _upgrade())

    # The event is held after its plan (profile read: not VIP) and its actions' INSERT, before commit.
    upgrade_finished_first = _race(monkeypatch, event_side, (services, "insert_rows"), upgrade_side)

    assert not upgrade_finished_first, "the upgrade must wait for the event's transaction"
    [action] = RewardAction.objects.filter(target_user_id=USER)
    assert action.status == RewardAction.Status.COMPLETED  # released by the upgrade, which saw it (tasks inline)
    assert event_side.result.actions[0].status == RewardAction.Status.LOCKED  # as planned, before
    assert UserProfile.objects.get(user_id=USER).is_vip


@pytest.mark.usefixtures("locked_reward_rule")
def test_an_event_waits_for_an_upgrade_in_progress_and_sees_it(monkeypatch):
    upgrade_side, event_side = _Side("user_service", _upgrade()), _Side("task_service", _task_done())

    # The upgrade is held after releasing the locked actions it could see, before commit.
    event_finished_first = _race(monkeypatch, upgrade_side, (profiles, "locked_release"), event_side)

    assert not event_finished_first, "the lock check must wait for the upgrade's transaction"
    [action] = RewardAction.objects.filter(target_user_id=USER)
    assert action.status == RewardAction.Status.COMPLETED  # planned unlocked: it read the VIP profile (tasks inline)
    assert event_side.result.actions[0].status == RewardAction.Status.PENDING


@pytest.mark.usefixtures("locked_reward_rule")
def test_events_checking_the_same_user_s_lock_do_not_wait_for_each_other(monkeypatch):
    first, second = _Side("task_service", _task_done("task-1")), _Side("task_service", _task_done("task-2"))

    second_finished_first = _race(monkeypatch, first, (services, "insert_rows"), second, wait=30)

    assert second_finished_first  # the first still held its (shared) lock
    assert EconomicEvent.objects.filter(event_type="task.done").count() == 2
    assert set(RewardAction.objects.values_list("status", flat=True)) == {RewardAction.Status.LOCKED}


def test_two_upgrades_rewarding_each_other_under_a_lock_both_go_through(monkeypatch, make_rule):
    """Each upgrade holds its own user's lock and then checks the other's: a deadlock. PostgreSQL
    aborts one; ingest tries it again once the other has committed, and nothing is lost or locked."""
    make_rule(
        "vip_friend_bonus", "user.upgraded_to_vip",
        [{"target": "context.friend", "reward_type": "points", "amount": "10", "lock_condition": "vip"}],
    )  # fmt: skip
    both_upgraded = threading.Barrier(2, timeout=30)
    passed: set = set()
    original = profiles.locked_release

    def release_then_meet(**kwargs):
        result = original(**kwargs)
        if threading.current_thread() not in passed:  # only the first attempt of each waits
            passed.add(threading.current_thread())
            both_upgraded.wait()
        return result

    monkeypatch.setattr(profiles, "locked_release", release_then_meet)
    sides = [
        _Side("user_service", {"external_id": f"up-{me}", "event_type": "user.upgraded_to_vip",
                               "actor_user_id": me, "context": {"friend": friend}})
        for me, friend in (("u-x", "u-y"), ("u-y", "u-x"))
    ]  # fmt: skip
    for side in sides:
        side.start()
    for side in sides:
        side.join(60)

    assert [side.error for side in sides] == [None, None]
    assert EconomicEvent.objects.filter(event_type="user.upgraded_to_vip").count() == 2
    statuses = dict(RewardAction.objects.values_list("target_user_id", "status"))
    assert statuses == {"u-x": RewardAction.Status.COMPLETED, "u-y": RewardAction.Status.COMPLETED}  # tasks inline
    assert set(UserProfile.objects.filter(is_vip=True).values_list("user_id", flat=True)) == {"u-x", "u-y"}
