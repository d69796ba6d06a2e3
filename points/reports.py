"""Reads for the finance reports and the user page: liability, lots and expiry (SPEC §13), monthly
flows, system accounts as the sum of their entries, and a user's statement rows."""

import calendar
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.db.models import Case, F, IntegerField, Q, Sum, Value, When
from django.db.models.functions import Coalesce, TruncMonth
from django.utils import timezone

from .admin_views import day_start, with_balance_changes
from .lots import OPEN_LOT_ORDER
from .models import Account, Entry, Lot, SystemAccount, Transaction

EXPIRY_WINDOWS_DAYS = (30, 60, 90)
Kind = Transaction.Kind
# The kinds that move points into or out of a user's balance (holds, releases and a hold's expiry
# only move points between available and held).
FLOW_KINDS = (Kind.CREDIT, Kind.DEBIT, Kind.CAPTURE, Kind.ADJUSTMENT, Kind.REVERSAL, Kind.POINTS_EXPIRY)


def account_for_user(user_id: str) -> Account | None:
    return Account.objects.filter(user_id=user_id, kind=Account.Kind.USER).first()


def open_lots(account: Account, *, limit: int = 50) -> list[Lot]:
    """The account's lots with points left, in the order debits consume them: soonest expiry first,
    never-expiring last, oldest first among equals."""
    return list(
        Lot.objects.filter(account=account, remaining__gt=0)
        .select_related("transaction")
        .order_by(*OPEN_LOT_ORDER)[:limit]
    )


def statement_rows(account: Account, *, limit: int = 50) -> list[Transaction]:
    """The account's newest transactions with their balance change and the running balance after."""
    rows = with_balance_changes(Transaction.objects.filter(account=account).select_related("created_by", "reverses"))
    return list(rows.order_by("-created_at", "-pk")[:limit])


def liability() -> int:
    """Outstanding points: what the users' accounts hold (settled balance, held points included)."""
    return Account.objects.filter(kind=Account.Kind.USER).aggregate(total=Coalesce(Sum("balance"), 0))["total"]


def expiring(*, account: Account | None = None, now: datetime | None = None) -> list[dict]:
    """Points of open lots expiring within each window of ``EXPIRY_WINDOWS_DAYS`` (cumulative: the
    60-day figure includes the 30-day one), first the points already due that the next expiry run
    takes (``days`` 0); for one account, or for all users."""
    now = now or timezone.now()
    open_ = Lot.objects.filter(remaining__gt=0, expires_at__isnull=False)
    if account is not None:
        open_ = open_.filter(account=account)
    sums = open_.aggregate(
        overdue=Coalesce(Sum("remaining", filter=Q(expires_at__lte=now)), 0),
        **{
            f"d{days}": Coalesce(Sum("remaining", filter=Q(expires_at__gt=now, expires_at__lte=now + timedelta(days=days))), 0)
            for days in EXPIRY_WINDOWS_DAYS
        },
    )  # fmt: skip
    windows = [{"days": days, "points": sums[f"d{days}"]} for days in EXPIRY_WINDOWS_DAYS]
    return [{"days": 0, "points": sums["overdue"]}, *windows]


@dataclass
class MonthFlow:
    month: date
    issued: int = 0
    spent: int = 0
    reversed: int = 0
    expired: int = 0
    adjusted_in: int = 0
    adjusted_out: int = 0
    returned: int = 0

    @property
    def net(self) -> int:
        return (
            self.issued
            + self.adjusted_in
            + self.returned
            - self.spent
            - self.reversed
            - self.expired
            - self.adjusted_out
        )


def month_start(day: date) -> date:
    return day.replace(day=1)


def month_end(day: date) -> date:
    return day.replace(day=calendar.monthrange(day.year, day.month)[1])


def _months(first: date, last: date) -> list[date]:
    months, current = [], month_start(first)
    while current <= last:
        months.append(current)
        current = (current + timedelta(days=32)).replace(day=1)
    return months


def monthly_flows(*, first_day: date, last_day: date) -> list[MonthFlow]:
    """Points into and out of the users' accounts per calendar month between two days (inclusive).

    Summed over the user accounts' entries, so each figure is what the users' balances gained or lost
    (holds and releases only move points between available and held and are left out): issued =
    credits; spent = debits and captures; reversed = credits taken back by reversals; returned =
    debits given back by reversals; expired = lot expiry; adjustments in each direction.
    """
    since, until = day_start(first_day), day_start(last_day + timedelta(days=1))
    positive = Sum(Case(When(amount__gt=0, then=F("amount")), default=Value(0), output_field=IntegerField()))
    negative = Sum(Case(When(amount__lt=0, then=-F("amount")), default=Value(0), output_field=IntegerField()))
    rows = (
        Entry.objects.filter(
            account__kind=Account.Kind.USER,
            transaction__kind__in=FLOW_KINDS,
            transaction__created_at__gte=since,
            transaction__created_at__lt=until,
        )
        .annotate(month=TruncMonth("transaction__created_at"), kind=F("transaction__kind"))
        .values("month", "kind")
        .annotate(gained=positive, lost=negative)
        .order_by()
    )
    flows = {month: MonthFlow(month=month) for month in _months(first_day, last_day)}
    for row in rows:
        month = timezone.localtime(row["month"]).date() if isinstance(row["month"], datetime) else row["month"]
        flow = flows.setdefault(month, MonthFlow(month=month))
        kind, gained, lost = row["kind"], row["gained"] or 0, row["lost"] or 0
        if kind == Kind.CREDIT:
            flow.issued += gained - lost
        elif kind in (Kind.DEBIT, Kind.CAPTURE):
            flow.spent += lost - gained
        elif kind == Kind.ADJUSTMENT:
            flow.adjusted_in += gained
            flow.adjusted_out += lost
        elif kind == Kind.REVERSAL:
            # A credit's reversal takes points from the user (a negative entry), a debit's or
            # capture's gives them back (a positive one).
            flow.reversed += lost
            flow.returned += gained
        elif kind == Kind.POINTS_EXPIRY:
            flow.expired += lost - gained
    return [flows[month] for month in sorted(flows)]


def _system_label(code: str) -> str:
    return SystemAccount(code).label if code in SystemAccount.values else code


def system_accounts() -> list[dict]:
    """Each system account with the sum of its entries (system accounts keep no cached balance)."""
    totals = dict(
        Entry.objects.filter(account__kind=Account.Kind.SYSTEM)
        .values_list("account_id")
        .annotate(total=Sum("amount"))
        .order_by()
    )
    return [
        {"account": account, "label": _system_label(account.code), "total": totals.get(account.pk, 0)}
        for account in Account.objects.filter(kind=Account.Kind.SYSTEM).order_by("code")
    ]
