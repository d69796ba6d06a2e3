"""The ledger's operations as callers post them: each one's input, scope and service, in one place.

The single-operation endpoints and the batch run every operation through ``ledger_operation``, so
an operation in a batch is exactly the operation alone: the same scope check, validation, service,
idempotency and result body.
"""

from collections.abc import Callable, Collection
from dataclasses import dataclass

from rest_framework.exceptions import PermissionDenied

from . import serializers, services
from .reversals import REVERSAL_SCOPES, reversal_original, transaction_reverse

REVERSE_SCOPES = ("points:debit", "points:credit")


@dataclass(frozen=True)
class Operation:
    input_serializer: type
    service: Callable
    # None: the scope depends on what is reversed (REVERSAL_SCOPES), and either of REVERSE_SCOPES is
    # needed to ask at all.
    scope: str | None


OPERATIONS: dict[str, Operation] = {
    "credit": Operation(serializers.CreditIn, services.account_credit, "points:credit"),
    "debit": Operation(serializers.DebitIn, services.account_debit, "points:debit"),
    "hold": Operation(serializers.HoldIn, services.hold_create, "points:hold"),
    "capture": Operation(serializers.CaptureIn, services.hold_capture, "points:hold"),
    "release": Operation(serializers.ReleaseIn, services.hold_release, "points:hold"),
    "reverse": Operation(serializers.ReverseIn, transaction_reverse, None),
}


@dataclass(frozen=True)
class OperationOutcome:
    status: int  # 201 performed, 200 a replay
    body: dict


def _lacks(scope: str) -> PermissionDenied:
    return PermissionDenied(f"This API key lacks the scope '{scope}'.")


def operation_input(*, source: str, scopes: Collection[str] | None, op: str, data) -> dict:
    """The validated arguments of operation ``op`` (its service's, but ``source``) from the request
    body ``data`` of the client ``source``, once its scopes allow it.

    ``scopes`` are the client's (None: an in-process caller, allowed everything). Raises what the
    API renders as the operation's refusal: PermissionDenied (403) or ValidationError (400).
    """
    operation = OPERATIONS[op]
    if scopes is not None:
        if operation.scope is not None and operation.scope not in scopes:
            raise _lacks(operation.scope)
        if operation.scope is None and not any(scope in scopes for scope in REVERSE_SCOPES):
            raise PermissionDenied(
                "This API key lacks each of the scopes " + ", ".join(f"'{each}'" for each in REVERSE_SCOPES) + "."
            )
    serializer = operation.input_serializer(data=data)
    serializer.is_valid(raise_exception=True)
    fields = serializer.validated_data
    if operation.scope is None and scopes is not None:
        original = reversal_original(source=source, transaction_id=fields["transaction_id"])
        needed = REVERSAL_SCOPES.get(original.kind)
        if needed is not None and needed not in scopes:
            raise _lacks(needed)
    return fields


def operation_outcome(result: services.LedgerResult) -> OperationOutcome:
    """What the API answers for an operation's result."""
    return OperationOutcome(200 if result.replayed else 201, serializers.operation_result(result.transaction))


def ledger_operation(*, source: str, scopes: Collection[str] | None, op: str, data) -> OperationOutcome:
    """Perform one operation ``op`` with the request body ``data`` for the client ``source``.

    Raises what the API renders as the operation's refusal: those of ``operation_input``, or the
    service's DomainError (404, 409, 422).
    """
    fields = operation_input(source=source, scopes=scopes, op=op, data=data)
    return operation_outcome(OPERATIONS[op].service(source=source, **fields))
