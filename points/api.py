"""Thin HTTP views over the ledger services (SPEC §9)."""

from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers as drf_serializers
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from config.api.fields import storable_text_problem
from config.api.pagination import NewestFirstCursorPagination, SoonestExpiryCursorPagination
from config.api.schema import COMMON_ERRORS, WRITE_ERRORS, error_responses
from config.api.views import ApiView

from . import selectors, serializers
from .batch import MAX_OPERATIONS, ledger_batch
from .operations import OPERATIONS, REVERSE_SCOPES, ledger_operation
from .serializers import StrictBooleanField

_NO_SUCH_HOLD = "No hold with this id placed by this client (`not_found`); nothing changed."
_NO_SUCH_PATH = "The path matches no account: the user id is longer than 100 characters (`not_found`)."
_BAD_CURSOR = "An invalid cursor, or a path that matches no account (`not_found`)."


class _LedgerOperation(ApiView):
    """Validate, call one service, render the stored result: 201 new, 200 replay (``ledger_operation``)."""

    op: str

    def post(self, request):
        principal = request.user
        outcome = ledger_operation(source=principal.client_name, scopes=principal.scopes, op=self.op, data=request.data)
        return Response(outcome.body, status=outcome.status)


def _operation_schema(summary, request, response, refusals=(), *, hold: bool = False, example: dict):
    return extend_schema(
        summary=summary,
        request=request,
        examples=[OpenApiExample("Request", value=example, request_only=True)],
        responses={
            201: OpenApiResponse(response, description="Performed."),
            200: OpenApiResponse(response, description="A replay of the same request: the original result."),
            **error_responses(*WRITE_ERRORS, *((404,) if hold else ()), refusals=refusals, not_found=_NO_SUCH_HOLD),
        },
        tags=["points"],
    )


class CreditView(_LedgerOperation):
    required_scope = "points:credit"
    op = "credit"

    @_operation_schema(
        "Credit points to a user",
        serializers.CreditIn,
        serializers.CreditOut,
        ("expiry_in_past",),
        example={
            "external_id": "quest-42-reward",
            "user_id": "alice",
            "amount": 150,
            "reason": "quest reward",
            "metadata": {"quest_id": 42},
        },
    )
    def post(self, request):
        return super().post(request)


class DebitView(_LedgerOperation):
    required_scope = "points:debit"
    op = "debit"

    @_operation_schema(
        "Debit points from a user",
        serializers.DebitIn,
        serializers.CreditOut,
        ("insufficient_funds",),
        example={"external_id": "order-1001", "user_id": "alice", "amount": 50, "reason": "shop order"},
    )
    def post(self, request):
        return super().post(request)


class HoldView(_LedgerOperation):
    required_scope = "points:hold"
    op = "hold"

    @_operation_schema(
        "Hold points until captured, released or expired",
        serializers.HoldIn,
        serializers.HoldOut,
        ("insufficient_funds",),
        example={"external_id": "order-1002-hold", "user_id": "alice", "amount": 30, "expires_in": 900},
    )
    def post(self, request):
        return super().post(request)


class CaptureView(_LedgerOperation):
    required_scope = "points:hold"
    op = "capture"

    @_operation_schema(
        "Capture a hold (a partial capture releases the rest)",
        serializers.CaptureIn,
        serializers.CaptureOut,
        ("hold_not_active", "capture_exceeds_hold"),
        hold=True,
        example={"external_id": "order-1002-capture", "hold_id": "0b7e4f3c-5d1a-4f6e-9a8b-2c3d4e5f6a7b", "amount": 20},
    )
    def post(self, request):
        return super().post(request)


class ReleaseView(_LedgerOperation):
    required_scope = "points:hold"
    op = "release"

    @_operation_schema(
        "Release a hold",
        serializers.ReleaseIn,
        serializers.ReleaseOut,
        ("hold_not_active",),
        hold=True,
        example={"external_id": "order-1002-release", "hold_id": "0b7e4f3c-5d1a-4f6e-9a8b-2c3d4e5f6a7b"},
    )
    def post(self, request):
        return super().post(request)


_NO_SUCH_TRANSACTION = "No credit, debit or capture with this id made by this client (`not_found`); nothing changed."


class ReverseView(_LedgerOperation):
    # Reversing a credit needs points:debit, a debit or capture points:credit (``ledger_operation``).
    required_scope = REVERSE_SCOPES
    op = "reverse"

    @extend_schema(
        summary="Reverse a credit, debit or capture, in full or in parts",
        description=(
            "Needs `points:debit` to reverse a credit (the points are taken back) and `points:credit` to reverse a "
            "debit or capture (they are given back). Only the client that made the original can reverse it; the "
            "reversed parts never add up to more than the original. With `allow_partial`, a credit reversal takes "
            "what is available and answers the rest as `shortfall`."
        ),
        request=serializers.ReverseIn,
        examples=[
            OpenApiExample(
                "Request",
                value={
                    "external_id": "refund-1001",
                    "transaction_id": "0b7e4f3c-5d1a-4f6e-9a8b-2c3d4e5f6a7b",
                    "amount": 50,
                    "reason": "order refunded",
                },
                request_only=True,
            )
        ],
        responses={
            201: OpenApiResponse(serializers.ReverseOut, description="Performed."),
            200: OpenApiResponse(serializers.ReverseOut, description="A replay of the same request: the original result."),
            **error_responses(
                *WRITE_ERRORS, 404,
                refusals=("insufficient_funds", "reversal_exceeds_original", "not_reversible"),
                not_found=_NO_SUCH_TRANSACTION,
            ),
        },
        tags=["points"],
    )  # fmt: skip
    def post(self, request):
        return super().post(request)


_BATCH_OPERATION_SCHEMA = {
    "type": "object",
    "description": (
        "One operation: `op` and that operation's request body (CreditInRequest, DebitInRequest, HoldInRequest, "
        "CaptureInRequest, ReleaseInRequest or ReverseInRequest). The body is judged as the operation alone "
        "judges it: an invalid one is that item's 400, not the batch's."
    ),
    "properties": {"op": {"type": "string", "enum": list(OPERATIONS)}},
    "required": ["op"],
    "additionalProperties": True,
}


@extend_schema_field({"type": "array", "items": _BATCH_OPERATION_SCHEMA, "minItems": 1, "maxItems": MAX_OPERATIONS})
class BatchOperationsField(drf_serializers.Field):
    """The list of operations: each an object naming a known ``op``; the rest of each is the operation's own."""

    def to_internal_value(self, data):
        if not isinstance(data, list) or not 1 <= len(data) <= MAX_OPERATIONS:
            raise ValidationError(f"A list of 1 to {MAX_OPERATIONS} operations is required.")
        for index, item in enumerate(data):
            if not isinstance(item, dict) or not isinstance(item.get("op"), str) or item["op"] not in OPERATIONS:
                raise ValidationError(
                    f"Operation {index}: an object with op one of {', '.join(OPERATIONS)} is required."
                )
        return data


class BatchIn(drf_serializers.Serializer):
    operations = BatchOperationsField()
    atomic = StrictBooleanField(
        required=False, default=False, help_text="All or nothing: the first refused operation undoes the batch (422)."
    )


class BatchItemOut(drf_serializers.Serializer):
    status = drf_serializers.IntegerField(help_text="The status the operation alone would answer (201, 200, 4xx).")
    body = drf_serializers.DictField(help_text="The body the operation alone would answer (a result or an error).")


class BatchOut(drf_serializers.Serializer):
    results = BatchItemOut(many=True)


# A key with none of these could not perform any operation of a batch.
BATCH_SCOPES = ("points:credit", "points:debit", "points:hold")


class BatchView(ApiView):
    # Each operation needs its own scope, checked per operation (``ledger_operation``); a key with
    # no ledger write scope at all is refused before the body is read.
    required_scope = BATCH_SCOPES

    @extend_schema(
        summary="Post many ledger operations at once",
        description=(
            "Each operation is exactly the operation alone: its scope, validation, idempotency and refusals; its "
            "result is the status and body it alone would answer, in order. The batch runs in one database "
            "transaction; consecutive credits are posted together, a few statements for the run. With "
            "`atomic: true`, the first refused operation makes the "
            "batch a 422 `batch_operation_refused` naming its index, and nothing is written."
        ),
        request=BatchIn,
        examples=[
            OpenApiExample(
                "Request",
                value={
                    "atomic": False,
                    "operations": [
                        {"op": "credit", "external_id": "quest-42-reward", "user_id": "alice", "amount": 150},
                        {"op": "debit", "external_id": "order-1001", "user_id": "alice", "amount": 50},
                    ],
                },
                request_only=True,
            )
        ],
        responses={
            200: OpenApiResponse(BatchOut, description="One result per operation, in order."),
            **error_responses(*COMMON_ERRORS, 415, refusals=("batch_operation_refused",)),
        },
        tags=["points"],
    )
    def post(self, request):
        principal = request.user
        serializer = BatchIn(data=request.data)
        serializer.is_valid(raise_exception=True)
        items = ledger_batch(
            source=principal.client_name,
            scopes=principal.scopes,
            operations=serializer.validated_data["operations"],
            atomic=serializer.validated_data["atomic"],
        )
        return Response({"results": [{"status": item.status, "body": item.body} for item in items]}, status=200)


def _path_user_id(user_id: str) -> str:
    """The user id from the URL; a 400 for text no account can have (a NUL would be a database error)."""
    problem = storable_text_problem(user_id)
    if problem:
        raise ValidationError({"user_id": [problem]})
    return user_id


_USER_ID = OpenApiParameter(
    "user_id",
    {"type": "string", "minLength": 1, "maxLength": 100, "pattern": "^[^/]+$"},
    OpenApiParameter.PATH,
    description="The user's id (any text without a slash, up to 100 characters).",
    examples=[OpenApiExample("A user", value="alice")],
)


class AccountView(ApiView):
    required_scope = "points:read"

    @extend_schema(
        summary="A user's balance (zeros for an unknown user)",
        parameters=[_USER_ID],
        responses={200: serializers.AccountOut, **error_responses(*COMMON_ERRORS, 404, not_found=_NO_SUCH_PATH)},
        tags=["points"],
    )
    def get(self, request, user_id: str):
        return Response(serializers.account_body(selectors.account_totals(user_id=_path_user_id(user_id))))


class AccountTransactionsView(ApiView):
    required_scope = "points:read"
    pagination_class = NewestFirstCursorPagination

    @extend_schema(
        summary="A user's transactions, newest first (cursor-paginated)",
        parameters=[_USER_ID],
        responses={
            200: serializers.HistoryItemOut(many=True),
            **error_responses(*COMMON_ERRORS, 404, not_found=_BAD_CURSOR),
        },
        tags=["points"],
    )
    def get(self, request, user_id: str):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(
            selectors.account_transactions(user_id=_path_user_id(user_id)), request, view=self
        )
        return paginator.get_paginated_response(serializers.HistoryItemOut(page, many=True).data)


class AccountLotsView(ApiView):
    required_scope = "points:read"
    pagination_class = SoonestExpiryCursorPagination

    @extend_schema(
        summary="A user's open lots, soonest expiry first (cursor-paginated; never-expiring last)",
        parameters=[_USER_ID],
        responses={
            200: serializers.LotOut(many=True),
            **error_responses(*COMMON_ERRORS, 404, not_found=_BAD_CURSOR),
        },
        tags=["points"],
    )
    def get(self, request, user_id: str):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(selectors.account_lots(user_id=_path_user_id(user_id)), request, view=self)
        return paginator.get_paginated_response(serializers.LotOut(page, many=True).data)
