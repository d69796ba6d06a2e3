from .models import Account, Transaction


def account_totals(*, user_id: str) -> dict:
    """The user's balance, held and available points; zeros for a user the ledger has not seen."""
    row = Account.objects.filter(user_id=user_id).values("balance", "held").first()
    balance, held = (row["balance"], row["held"]) if row else (0, 0)
    return {"user_id": user_id, "balance": balance, "held": held, "available": balance - held}


def account_transactions(*, user_id: str):
    return (
        Transaction.objects.filter(account__user_id=user_id)
        .only(
            "id", "kind", "amount", "reason", "metadata", "external_id", "hold_id", "created_at",
            "balance_after", "held_after",
        )
    )  # fmt: skip
