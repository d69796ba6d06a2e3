"""Many ledger operations in one database transaction (SPEC §9 "Batch").

Each operation runs through ``ledger_operation`` exactly as it would alone, in a savepoint of its
own: a refused one leaves the others' work in place, unless the batch is atomic, when the first
refusal undoes the whole batch. The savepoint is the operation's own: every ledger service is
atomic (or, on a one-statement path, runs its statement in a savepoint), so wrapping it in another
would only add two round trips per operation.
"""

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from django.db import transaction
from rest_framework.exceptions import APIException, ValidationError

from config.api.errors import DomainError, api_exception_handler

from .errors import LedgerError
from .operations import OPERATIONS, ledger_operation

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
    results: list[BatchItem] = []
    for index, item in enumerate(operations):
        try:
            op, data = _operation_of(item)
            outcome = ledger_operation(source=source, scopes=scopes, op=op, data=data)
        except (DomainError, APIException) as exc:
            refused = _refusal(exc)
            if atomic:
                raise BatchOperationRefused(
                    f"Operation {index} was refused ({refused.body['error']['code']}); nothing was written.",
                    details={"index": index, "status": refused.status, "error": refused.body["error"]},
                ) from exc
            results.append(refused)
            continue
        results.append(BatchItem(outcome.status, outcome.body))
    return results
