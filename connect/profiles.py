"""User profiles projected from events (SPEC §7) and the release of rewards they unlock."""

from django.conf import settings
from django.db import connection
from django.utils import timezone

from rules.expressions import ProfileView
from rules.models import lock_satisfied

from .models import EconomicEvent, RewardAction, UserProfile

MAX_UPLINE_DEPTH = 10

# First key of the transaction-level advisory locks that order lock checks and upgrades per user
# (the second key is the user id's hashtext; a collision only makes two users' upgrades and lock
# checks wait for each other).
_UPGRADE_LOCK_SPACE = 0x5052_4F46  # "PROF"


def upgrade_lock(user_id: str, *, exclusive: bool) -> None:
    """Order an upgrade of ``user_id``'s profile against the lock checks of new actions for them.

    A VIP/PRO upgrade releases the user's ``locked`` actions it can see. An event planned
    concurrently could read the profile before the upgrade commits and store its action ``locked``
    after the release ran, leaving it locked until some later upgrade. So, until their transaction
    ends, an upgrade holds this lock exclusively and each lock check holds it shared (checks do not
    wait for one another): whichever comes second sees what the first committed. PostgreSQL only;
    SQLite runs one write transaction at a time, which orders them already.
    """
    if connection.vendor != "postgresql":
        return
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {function}(%s, hashtext(%s))", [_UPGRADE_LOCK_SPACE, user_id])


def profile_view(profile: UserProfile | None) -> ProfileView | None:
    if profile is None:
        return None
    return ProfileView(
        user_id=profile.user_id,
        tier=profile.tier,
        is_vip=profile.is_vip,
        is_pro=profile.is_pro,
        sponsor=profile.sponsor_id,
    )


class ProfileReader:
    """Reads profiles for one event's evaluation, each user at most once."""

    def __init__(self):
        self._cache: dict[str, UserProfile | None] = {}
        self._locked: dict[str, ProfileView | None] = {}

    def _load(self, user_id: str) -> UserProfile | None:
        if user_id not in self._cache:
            self._cache[user_id] = UserProfile.objects.filter(user_id=user_id).first()
        return self._cache[user_id]

    def profile(self, user_id: str) -> ProfileView | None:
        if not user_id:
            return None
        return profile_view(self._load(user_id))

    def lock_profile(self, user_id: str) -> ProfileView | None:
        """The profile a line's lock condition is checked against: read after taking the user's
        upgrade lock (shared) for the rest of the transaction, so never older than an upgrade that
        could have missed this event's action (``upgrade_lock``). Needs the caller's transaction."""
        if not user_id:
            return None
        if user_id not in self._locked:
            upgrade_lock(user_id, exclusive=False)
            self._locked[user_id] = profile_view(UserProfile.objects.filter(user_id=user_id).first())
        return self._locked[user_id]

    def upline(self, user_id: str, n: int) -> str | None:
        """The n-th sponsor above ``user_id``; None past the top of the tree (or on a cycle)."""
        current, seen = user_id, {user_id}
        for _ in range(min(n, MAX_UPLINE_DEPTH)):
            profile = self._load(current)
            if profile is None or not profile.sponsor_id or profile.sponsor_id in seen:
                return None
            current = profile.sponsor_id
            seen.add(current)
        return current


def _is_first_level(context: dict) -> bool:
    level = context.get("level") if isinstance(context, dict) else None
    return level is None or (not isinstance(level, bool) and level == 1)


def profile_apply(*, event: EconomicEvent, changes: list[dict] | None = None) -> list[str]:
    """Apply the event to the profiles; returns ids of locked actions it released to ``pending``.

    Caller holds the event's transaction; the released actions must be enqueued after commit.
    ``changes``, when given, receives one ``{"user_id", "field", "from", "to"}`` per profile field
    the event changed (for its decision trace).
    """
    event_type = event.event_type
    actor = event.actor_user_id
    if event_type in settings.PROFILE_SPONSOR_EVENT_TYPES:
        sponsor = event.primary_subject_user_id
        if sponsor and sponsor != actor and _is_first_level(event.context):
            if _sponsor_record(user_id=actor, sponsor_id=sponsor) and changes is not None:
                changes.append({"user_id": actor, "field": "sponsor", "from": None, "to": sponsor})
    upgrade = {}
    if event_type in settings.PROFILE_VIP_EVENT_TYPES:
        upgrade["is_vip"] = True
    if event_type in settings.PROFILE_PRO_EVENT_TYPES:
        upgrade["is_pro"] = True
    if upgrade:
        upgrade_lock(actor, exclusive=True)
        before, _ = UserProfile.objects.get_or_create(user_id=actor)
        if changes is not None:
            changes += [
                {"user_id": actor, "field": name, "from": False, "to": True}
                for name in upgrade
                if not getattr(before, name)
            ]
        UserProfile.objects.filter(user_id=actor).update(**upgrade, updated_at=timezone.now())
        return locked_release(user_id=actor)
    return []


def _sponsor_record(*, user_id: str, sponsor_id: str) -> bool:
    """The first sponsor recorded stays; a sponsor that would close a cycle is ignored. Returns
    whether this call recorded it."""
    reader = ProfileReader()
    ancestor = sponsor_id
    for _ in range(MAX_UPLINE_DEPTH):
        if ancestor == user_id:
            return False
        ancestor = reader.upline(ancestor, 1)
        if ancestor is None:
            break
    UserProfile.objects.get_or_create(user_id=user_id)
    updated = UserProfile.objects.filter(user_id=user_id, sponsor_id__isnull=True).update(
        sponsor_id=sponsor_id, updated_at=timezone.now()
    )
    return updated > 0


def locked_release(*, user_id: str) -> list[str]:
    """Move the user's locked actions whose condition the profile now meets to ``pending``.

    Runs in the caller's transaction; returns the released ids (to enqueue on commit).
    """
    profile = profile_view(UserProfile.objects.filter(user_id=user_id).first())
    locked = list(
        RewardAction.objects.select_for_update()
        .filter(target_user_id=user_id, status=RewardAction.Status.LOCKED)
        .values_list("pk", "locked_until_condition")
    )
    released = [pk for pk, condition in locked if lock_satisfied(condition, profile)]
    if released:
        now = timezone.now()
        RewardAction.objects.filter(pk__in=released, status=RewardAction.Status.LOCKED).update(
            status=RewardAction.Status.PENDING, released_at=now, updated_at=now, next_attempt_at=now
        )
    return [str(pk) for pk in released]
