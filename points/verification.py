"""Read-only checks of every ledger invariant; used by ``verify_ledger`` and by the tests."""

from dataclasses import dataclass, field

from django.db.models import Count, F, OuterRef, Q, Subquery, Sum, Value
from django.db.models.functions import Coalesce

from .models import Account, Entry, Hold, Lot, Transaction

SAMPLE = 10


@dataclass
class Check:
    name: str
    description: str
    offenders: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.offenders


def _sum_of(qs, **filters):
    return Coalesce(
        Subquery(
            qs.filter(account=OuterRef("pk"), **filters)
            .order_by()
            .values("account")
            .annotate(total=Sum("amount"))
            .values("total")[:1]
        ),
        Value(0),
    )


def _holds_disagreeing():
    kind = "transactions__kind"
    amount = "transactions__amount"
    settles_as_recorded = (
        Q(status=Hold.Status.CAPTURED, **{kind: Transaction.Kind.CAPTURE, amount: F("captured_amount")})
        | Q(status=Hold.Status.RELEASED, **{kind: Transaction.Kind.RELEASE, amount: F("released_amount")})
        | Q(status=Hold.Status.EXPIRED, **{kind: Transaction.Kind.EXPIRY, amount: F("released_amount")})
    )
    settling = [Transaction.Kind.CAPTURE, Transaction.Kind.RELEASE, Transaction.Kind.EXPIRY]
    holds = Hold.objects.annotate(
        placements=Count("transactions", filter=Q(**{kind: Transaction.Kind.HOLD, amount: F("amount")})),
        settlements=Count("transactions", filter=Q(**{f"{kind}__in": settling})),
        matching=Count("transactions", filter=settles_as_recorded),
    )
    return holds.filter(
        ~Q(placements=1)
        | Q(status=Hold.Status.ACTIVE, settlements__gt=0)
        | (~Q(status=Hold.Status.ACTIVE) & (~Q(settlements=1) | ~Q(matching=1)))
    ).order_by("created_at")


def ledger_verify() -> list[Check]:
    checks: list[Check] = []

    unbalanced = Entry.objects.values("transaction_id").annotate(total=Sum("amount")).exclude(total=0).order_by()
    checks.append(Check(
        "transactions_balanced", "every transaction's entries sum to zero",
        [f"{row['transaction_id']} sums to {row['total']}" for row in unbalanced[:SAMPLE]],
    ))  # fmt: skip

    # A reversal that took nothing (allow_partial, nothing available) is stored without entries.
    empty = (
        Transaction.objects.annotate(n=Count("entries")).filter(n=0)
        .exclude(kind=Transaction.Kind.REVERSAL, amount=0).values_list("pk", flat=True)
    )  # fmt: skip
    checks.append(Check(
        "transactions_have_entries", "every transaction has entries (but a reversal of nothing)",
        [f"{pk} has no entries" for pk in empty[:SAMPLE]],
    ))  # fmt: skip

    users = Account.objects.filter(kind=Account.Kind.USER).annotate(
        entries_total=_sum_of(Entry.objects, part__in=[Entry.Part.AVAILABLE, Entry.Part.HELD]),
        entries_held=_sum_of(Entry.objects, part=Entry.Part.HELD),
        holds_active=_sum_of(Hold.objects, status=Hold.Status.ACTIVE),
    )
    checks.append(Check(
        "balances_match_entries", "each user's cached balance equals the sum of its entries",
        [f"{a.user_id}: balance {a.balance} != entries {a.entries_total}"
         for a in users.exclude(balance=F("entries_total"))[:SAMPLE]],
    ))  # fmt: skip
    checks.append(Check(
        "held_matches_entries", "each user's cached held equals the sum of its held entries",
        [f"{a.user_id}: held {a.held} != held entries {a.entries_held}"
         for a in users.exclude(held=F("entries_held"))[:SAMPLE]],
    ))  # fmt: skip
    checks.append(Check(
        "held_matches_active_holds", "each user's held equals the sum of its active holds",
        [f"{a.user_id}: held {a.held} != active holds {a.holds_active}"
         for a in users.exclude(held=F("holds_active"))[:SAMPLE]],
    ))  # fmt: skip
    negative = Account.objects.filter(kind=Account.Kind.USER).filter(Q(held__lt=0) | Q(balance__lt=F("held")))
    checks.append(Check(
        "available_not_negative", "no user has negative available or held points",
        [f"{a.user_id}: balance {a.balance}, held {a.held}" for a in negative[:SAMPLE]],
    ))  # fmt: skip

    bad_settlement = Hold.objects.exclude(status=Hold.Status.ACTIVE).exclude(
        amount=F("captured_amount") + F("released_amount")
    )
    unsettled = Hold.objects.exclude(status=Hold.Status.ACTIVE).exclude(
        transactions__kind__in=[Transaction.Kind.CAPTURE, Transaction.Kind.RELEASE, Transaction.Kind.EXPIRY]
    )
    checks.append(Check(
        "holds_settled", "every closed hold is fully settled by one capture, release or expiry",
        [f"hold {h.pk}: {h.status}, amount {h.amount}, captured {h.captured_amount}, released {h.released_amount}"
         for h in bad_settlement[:SAMPLE]] + [f"hold {pk}: closed without a settling transaction"
         for pk in unsettled.values_list("pk", flat=True)[:SAMPLE]],
    ))  # fmt: skip

    checks.append(Check(
        "hold_transactions_agree",
        "each hold has one placing transaction of its amount; an active one no settlement, a closed one exactly "
        "one settlement of the kind and amount its status records",
        [f"hold {h.pk}: {h.status}, {h.placements} placing and {h.settlements} settling transaction(s), "
         f"{h.matching} matching its status" for h in _holds_disagreeing()[:SAMPLE]],
    ))  # fmt: skip

    lots = Account.objects.filter(kind=Account.Kind.USER).annotate(
        lots_remaining=Coalesce(
            Subquery(
                Lot.objects.filter(account=OuterRef("pk")).order_by().values("account")
                .annotate(total=Sum("remaining")).values("total")[:1]
            ),
            Value(0),
        )
    )  # fmt: skip
    checks.append(Check(
        "lots_match_balance", "each user's open lots' remainders add up to the balance",
        [f"{a.user_id}: balance {a.balance} != open lots {a.lots_remaining}"
         for a in lots.exclude(balance=F("lots_remaining"))[:SAMPLE]],
    ))  # fmt: skip
    bad_lots = Lot.objects.filter(Q(remaining__lt=0) | Q(remaining__gt=F("amount")))
    checks.append(Check(
        "lots_within_amount", "no lot has a negative remainder or one above its amount",
        [f"lot {lot.pk}: remaining {lot.remaining} of {lot.amount}" for lot in bad_lots[:SAMPLE]],
    ))  # fmt: skip

    reversed_sum = Coalesce(
        Subquery(
            Transaction.objects.filter(reverses=OuterRef("pk")).order_by().values("reverses")
            .annotate(total=Sum("amount")).values("total")[:1]
        ),
        Value(0),
    )  # fmt: skip
    originals = Transaction.objects.filter(Q(reversed_amount__gt=0) | Q(reversals__isnull=False)).distinct()
    over = originals.annotate(reversals_total=reversed_sum).filter(
        Q(reversals_total__gt=F("amount")) | ~Q(reversals_total=F("reversed_amount"))
    )
    not_reversible = Transaction.objects.filter(reverses__isnull=False).exclude(
        reverses__kind__in=Transaction.REVERSIBLE_KINDS
    )
    checks.append(Check(
        "reversals_within_original",
        "no credit, debit or capture is reversed beyond its amount, its counter agrees with its reversals, "
        "and only those kinds are reversed",
        [f"{t.pk}: amount {t.amount}, reversals {t.reversals_total}, counter {t.reversed_amount}" for t in over[:SAMPLE]]
        + [f"{pk}: reverses a transaction of a kind that cannot be reversed"
           for pk in not_reversible.values_list("pk", flat=True)[:SAMPLE]],
    ))  # fmt: skip

    grand_total = Entry.objects.aggregate(total=Coalesce(Sum("amount"), Value(0)))["total"]
    checks.append(Check(
        "ledger_balanced", "all entries together sum to zero",
        [f"all entries sum to {grand_total}"] if grand_total else [],
    ))  # fmt: skip
    return checks
