from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import F, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from .models import Account, Lot, Transaction
from .statements import ledger_sql

# Sorts never-expiring lots after every dated one in the lots list's cursor order.
NEVER = datetime(9999, 12, 31, tzinfo=UTC)


# One probe of the idempotency index per key, whatever the statistics say: the subquery is kept apart
# (OFFSET 0) so the planner cannot turn it into a scan of every row of ``source`` it underestimated,
# as it does while a source's rows grow faster than autovacuum analyzes them.
TRANSACTIONS_BY_KEY_SQL = """
    SELECT stored.id FROM unnest(CAST(%s AS text[])) AS key (external_id)
      CROSS JOIN LATERAL (SELECT id FROM {transactions}
                           WHERE source = %s AND external_id = key.external_id OFFSET 0) AS stored
"""


def transactions_by_key(source: str, external_ids: list[str]) -> list[Transaction]:
    """The stored Transactions of ``source`` among ``external_ids``, with their account and hold. The
    keys are looked up first (one statement of fixed text); the Transactions are loaded only when some
    are stored, which for a batch of new credits they are not."""
    ids = transaction_ids_by_key(source, external_ids)
    if not ids:
        return []
    return list(Transaction.objects.select_related("account", "hold").filter(pk__in=ids))


def transaction_ids_by_key(source: str, external_ids: list[str]) -> list:
    """The ids of the stored Transactions of ``source`` among ``external_ids``."""
    if connection.vendor != "postgresql":
        stored = Transaction.objects.filter(source=source, external_id__in=external_ids)
        return list(stored.values_list("pk", flat=True))
    with connection.cursor() as cursor:
        cursor.execute(ledger_sql(TRANSACTIONS_BY_KEY_SQL), [external_ids, source])
        return [row[0] for row in cursor.fetchall()]


def account_totals(*, user_id: str) -> dict:
    """The user's balance, held and available points, the points whose lots expire within
    POINTS_EXPIRY_NOTICE_DAYS and the next expiry; zeros and null for a user the ledger has not seen."""
    row = Account.objects.filter(user_id=user_id).values("pk", "balance", "held").first()
    balance, held = (row["balance"], row["held"]) if row else (0, 0)
    totals = {"user_id": user_id, "balance": balance, "held": held, "available": balance - held}
    totals.update(expiring_soon=0, next_expiry=None)
    if row is None:
        return totals
    dated = Lot.objects.filter(account_id=row["pk"], remaining__gt=0, expires_at__isnull=False)
    notice = timezone.now() + timedelta(days=settings.POINTS_EXPIRY_NOTICE_DAYS)
    totals["expiring_soon"] = dated.filter(expires_at__lte=notice).aggregate(
        total=Coalesce(Sum("remaining"), Value(0))
    )["total"]
    soonest = dated.order_by("expires_at").values_list("expires_at", flat=True).first()
    if soonest is not None:
        amount = dated.filter(expires_at=soonest).aggregate(total=Sum("remaining"))["total"]
        totals["next_expiry"] = {"amount": amount, "expires_at": soonest}
    return totals


def account_transactions(*, user_id: str):
    return (
        Transaction.objects.filter(account__user_id=user_id)
        .only(
            "id", "kind", "amount", "reason", "metadata", "external_id", "hold_id", "created_at",
            "balance_after", "held_after", "reverses_id",
        )
    )  # fmt: skip


def account_lots(*, user_id: str):
    """A user's open lots; ``expiry_order`` is the expiry with never-expiring lots last."""
    return Lot.objects.filter(account__user_id=user_id, remaining__gt=0).annotate(
        expiry_order=Coalesce("expires_at", Value(NEVER))
    )


def lots_expiring_soon(*, within_days: int, now: datetime | None = None):
    """Open lots whose expiry falls within ``within_days`` from ``now`` (not yet due), soonest first:
    ``id``, ``user_id``, ``remaining`` and ``expires_at`` of each."""
    now = now or timezone.now()
    return (
        Lot.objects.filter(
            remaining__gt=0,
            expires_at__gt=now,
            expires_at__lte=now + timedelta(days=within_days),
            account__kind=Account.Kind.USER,
        )
        .order_by("expires_at", "pk")
        .values("pk", "remaining", "expires_at", user_id=F("account__user_id"))
    )
