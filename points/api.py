"""Thin HTTP views over the ledger services (SPEC §9)."""

from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from config.api.fields import storable_text_problem
from config.api.pagination import NewestFirstCursorPagination
from config.api.schema import COMMON_ERRORS, WRITE_ERRORS, error_responses
from config.api.views import ApiView

from . import selectors, serializers, services

_NO_SUCH_HOLD = "No hold with this id placed by this client (`not_found`); nothing changed."
_NO_SUCH_PATH = "The path matches no account: the user id is longer than 100 characters (`not_found`)."
_BAD_CURSOR = "An invalid cursor, or a path that matches no account (`not_found`)."


class _LedgerOperation(ApiView):
    """Validate, call one service, render the stored result: 201 new, 200 replay."""

    input_serializer: type
    service = None

    def post(self, request):
        serializer = self.input_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = type(self).service(source=request.user.client_name, **serializer.validated_data)
        return Response(serializers.operation_result(result.transaction), status=200 if result.replayed else 201)


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
    input_serializer = serializers.CreditIn
    service = services.account_credit

    @_operation_schema(
        "Credit points to a user",
        serializers.CreditIn,
        serializers.CreditOut,
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
    input_serializer = serializers.DebitIn
    service = services.account_debit

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
    input_serializer = serializers.HoldIn
    service = services.hold_create

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
    input_serializer = serializers.CaptureIn
    service = services.hold_capture

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
    input_serializer = serializers.ReleaseIn
    service = services.hold_release

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
        return Response(selectors.account_totals(user_id=_path_user_id(user_id)))


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
