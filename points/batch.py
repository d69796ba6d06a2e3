"""Many ledger operations in one database transaction (SPEC §9 "Batch").

Each operation is checked (scope, input) and performed exactly as it would be alone
(``points.operations``): a refused one leaves the others' work in place, unless the batch is
atomic, when the first refusal undoes the whole batch. Consecutive credits are performed together
by ``account_credits_post``, the batch ledger service dispatch posts its credits with, which gives
each credit the outcome it alone would have in a few statements for the whole run; every other
operation runs through its own service, which is atomic (its own savepoint) inside the batch.
"""

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from django.db import transaction
from rest_framework.exceptions import APIException, ValidationError

from config.api.errors import DomainError, api_exception_handler

from .errors import LedgerError
from .operations import OPERATIONS, ledger_operation, operation_input, operation_outcome
from .services import CreditIn, account_credits_post

MAX_OPERATIONS = 1000


@dataclass(frozen=True)
class BatchItem:
    status: int
    body: dict


class BatchOperationRefused(LedgerError):
    code = "batch_operation_refused"
    default_message = "An operation of the atomic batch was refused; nothing was written."


def _refusal(exc: Exception) -> BatchItem:
    """The status and body the operation alone would have answered with (the API's one error mapping)."""
    response = api_exception_handler(exc, {})
    return BatchItem(response.status_code, response.data)


def _operation_of(item) -> tuple[str, dict]:
    if not isinstance(item, dict):
        raise ValidationError({"non_field_errors": ["An operation must be a JSON object."]})
    op = item.get("op")
    if not isinstance(op, str) or op not in OPERATIONS:  # (a str first: a dict is not hashable)
        raise ValidationError({"op": [f"One of {', '.join(OPERATIONS)} is required."]})
    return op, {key: value for key, value in item.items() if key != "op"}


class _Refused(Exception):
    """The first refusal of an atomic batch, at ``index``."""

    def __init__(self, index: int, cause: Exception):
        self.index, self.cause = index, cause


@transaction.atomic
def ledger_batch(
    *, source: str, operations: Sequence[dict], atomic: bool = False, scopes: Collection[str] | None = None
) -> list[BatchItem]:
    """Perform ``operations`` (each ``{"op": ..., **its body}``) in order for the client ``source``.

    Returns one item per operation: the status and body the operation alone would answer. With
    ``atomic``, the first refusal raises BatchOperationRefused naming its index, and nothing is
    written. ``scopes`` as for ``ledger_operation``. An unexpected error raises (nothing written).
    """
    if not 1 <= len(operations) <= MAX_OPERATIONS:
        raise ValueError(f"A batch has 1 to {MAX_OPERATIONS} operations.")
    try:
        return _performed(source, operations, atomic=atomic, scopes=scopes)
    except _Refused as refusal:
        refused = _refusal(refusal.cause)
        raise BatchOperationRefused(
            f"Operation {refusal.index} was refused ({refused.body['error']['code']}); nothing was written.",
            details={"index": refusal.index, "status": refused.status, "error": refused.body["error"]},
        ) from refusal.cause


def _performed(source: str, operations: Sequence[dict], *, atomic: bool, scopes) -> list[BatchItem]:
    results: list[BatchItem | None] = [None] * len(operations)
    credits: list[tuple[int, CreditIn]] = []  # the run of credits not performed yet

    def refused(index: int, exc: Exception) -> None:
        if atomic:
            raise _Refused(index, exc)
        results[index] = _refusal(exc)

    def credits_perform() -> None:
        # Every refusal of an earlier operation is known by now, so the first one is raised first.
        if not credits:
            return
        outcomes = account_credits_post(source=source, credits=[credit for _, credit in credits])
        for (index, _), outcome in zip(credits, outcomes, strict=True):
            if isinstance(outcome, DomainError):
                refused(index, outcome)
            else:
                done = operation_outcome(outcome)
                results[index] = BatchItem(done.status, done.body)
        credits.clear()

    for index, item in enumerate(operations):
        try:
            op, data = _operation_of(item)
            if op == "credit":
                credits.append((index, CreditIn(**operation_input(source=source, scopes=scopes, op=op, data=data))))
                continue
            credits_perform()
            outcome = ledger_operation(source=source, scopes=scopes, op=op, data=data)
        except (DomainError, APIException) as exc:
            if atomic:
                credits_perform()
            refused(index, exc)
            continue
        results[index] = BatchItem(outcome.status, outcome.body)
    credits_perform()
    return results
