"""Reads behind the admin's user page: one user whole — profile, referral tree, ledger, actions, events."""

import uuid
from dataclasses import dataclass, field

from django.conf import settings

from points import reports
from points.models import Account, Transaction

from .models import EconomicEvent, RewardAction, UserProfile

UPLINE_LEVELS = 5
LIST_LIMIT = 50


@dataclass
class StatementRow:
    transaction: Transaction
    action: RewardAction | None = None


@dataclass
class UserOverview:
    user_id: str
    profile: UserProfile | None
    upline: list[str]
    referrals: list[str]
    referral_count: int
    actions: list[RewardAction]
    events: list[EconomicEvent]
    # Ledger figures: None when the viewer may not see them (SPEC §11) or the user has no account.
    account: Account | None = None
    statement: list[StatementRow] = field(default_factory=list)
    lots: list = field(default_factory=list)
    # Points of the open lots due within 30/60/90 days (``reports.expiring``), with an account.
    expiring: list[dict] = field(default_factory=list)
    ledger_visible: bool = False

    @property
    def known(self) -> bool:
        return bool(self.profile or self.actions or self.events or self.account)


def upline_of(user_id: str, *, levels: int = UPLINE_LEVELS) -> list[str]:
    """Sponsors above ``user_id``, nearest first, stopping at a loop or after ``levels``."""
    chain, current = [], user_id
    for _ in range(levels):
        sponsor = UserProfile.objects.filter(user_id=current).values_list("sponsor_id", flat=True).first()
        if not sponsor or sponsor == user_id or sponsor in chain:
            break
        chain.append(sponsor)
        current = sponsor
    return chain


def _statement(account: Account) -> list[StatementRow]:
    """The account's newest transactions, each with the reward action that made it (Connect's
    credits carry the action id as their external_id)."""
    transactions = reports.statement_rows(account, limit=LIST_LIMIT)
    action_ids = []
    for txn in transactions:
        if txn.source == settings.CONNECT_LEDGER_SOURCE:
            try:
                action_ids.append(uuid.UUID(txn.external_id))
            except ValueError:
                pass
    actions = {str(a.pk): a for a in RewardAction.objects.filter(pk__in=action_ids).select_related("event")}
    return [StatementRow(transaction=txn, action=actions.get(txn.external_id)) for txn in transactions]


def user_overview(*, user_id: str, with_ledger: bool) -> UserOverview:
    profile = UserProfile.objects.filter(user_id=user_id).first()
    referrals = UserProfile.objects.filter(sponsor_id=user_id).order_by("user_id")
    actions = list(
        RewardAction.objects.filter(target_user_id=user_id).select_related("event").order_by("-created_at")[:LIST_LIMIT]
    )
    # Two index ranges (actor, subject) rather than one OR that would scan.
    as_actor = EconomicEvent.objects.filter(actor_user_id=user_id).order_by("-received_at")[:LIST_LIMIT]
    as_subject = EconomicEvent.objects.filter(primary_subject_user_id=user_id).order_by("-received_at")[:LIST_LIMIT]
    events = sorted({e.pk: e for e in [*as_actor, *as_subject]}.values(), key=lambda e: e.received_at, reverse=True)
    overview = UserOverview(
        user_id=user_id,
        profile=profile,
        upline=upline_of(user_id),
        referrals=list(referrals.values_list("user_id", flat=True)[:20]),
        referral_count=referrals.count(),
        actions=actions,
        events=events[:LIST_LIMIT],
        ledger_visible=with_ledger,
    )
    if with_ledger:
        overview.account = reports.account_for_user(user_id)
        if overview.account is not None:
            overview.statement = _statement(overview.account)
            overview.lots = reports.open_lots(overview.account)
            overview.expiring = reports.expiring(account=overview.account)
    return overview


def reversal_shortfalls(*, limit: int = 100) -> list[RewardAction]:
    """Reversal actions that could not take back all they should (SPEC §12: the user had spent the
    points), newest first, with the action each reverses and its event."""
    return list(
        RewardAction.objects.filter(reverses__isnull=False, shortfall__gt=0)
        .select_related("event", "reverses", "reverses__event")
        .order_by("-created_at")[:limit]
    )
