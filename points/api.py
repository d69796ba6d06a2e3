"""Thin HTTP views over the ledger services (SPEC §9)."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api.fields import ErrorSerializer, storable_text_problem
from config.api.pagination import NewestFirstCursorPagination

from . import selectors, serializers, services

_ERR = ErrorSerializer


def _errors(*codes: int) -> dict:
    described = {
        400: "Invalid input (`validation_error`); nothing changed.",
        401: "Missing or invalid API key (`not_authenticated`).",
        403: "The key lacks the scope (`permission_denied`).",
        404: "No such hold or resource (`not_found`).",
        409: "The external_id was used with a different payload (`idempotency_conflict`).",
        413: "The request body is too large (`request_too_large`).",
        422: "Refused by the ledger; nothing changed.",
        429: "Too many requests (`throttled`); see Retry-After.",
    }
    return {code: OpenApiResponse(_ERR, description=described[code]) for code in codes}


class _LedgerOperation(APIView):
    """Validate, call one service, render the stored result: 201 new, 200 replay."""

    input_serializer: type
    service = None

    def post(self, request):
        serializer = self.input_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = type(self).service(source=request.user.client_name, **serializer.validated_data)
        return Response(serializers.operation_result(result.transaction), status=200 if result.replayed else 201)


def _operation_schema(summary, request, response, refusals):
    return extend_schema(
        summary=summary,
        request=request,
        responses={
            201: OpenApiResponse(response, description="Performed."),
            200: OpenApiResponse(response, description="A replay of the same request: the original result."),
            **_errors(400, 401, 403, 409, 413, 429, *refusals),
        },
        tags=["points"],
    )


class CreditView(_LedgerOperation):
    required_scope = "points:credit"
    input_serializer = serializers.CreditIn
    service = services.account_credit

    @_operation_schema("Credit points to a user", serializers.CreditIn, serializers.CreditOut, ())
    def post(self, request):
        return super().post(request)


class DebitView(_LedgerOperation):
    required_scope = "points:debit"
    input_serializer = serializers.DebitIn
    service = services.account_debit

    @_operation_schema("Debit points from a user", serializers.DebitIn, serializers.CreditOut, (422,))
    def post(self, request):
        return super().post(request)


class HoldView(_LedgerOperation):
    required_scope = "points:hold"
    input_serializer = serializers.HoldIn
    service = services.hold_create

    @_operation_schema(
        "Hold points until captured, released or expired", serializers.HoldIn, serializers.HoldOut, (422,)
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
        (404, 422),
    )
    def post(self, request):
        return super().post(request)


class ReleaseView(_LedgerOperation):
    required_scope = "points:hold"
    input_serializer = serializers.ReleaseIn
    service = services.hold_release

    @_operation_schema("Release a hold", serializers.ReleaseIn, serializers.ReleaseOut, (404, 422))
    def post(self, request):
        return super().post(request)


def _path_user_id(user_id: str) -> str:
    """The user id from the URL; a 400 for text no account can have (a NUL would be a database error)."""
    problem = storable_text_problem(user_id)
    if problem:
        raise ValidationError({"user_id": [problem]})
    return user_id


class AccountView(APIView):
    required_scope = "points:read"

    @extend_schema(
        summary="A user's balance (zeros for an unknown user)",
        responses={200: serializers.AccountOut, **_errors(400, 401, 403, 429)},
        tags=["points"],
    )
    def get(self, request, user_id: str):
        return Response(selectors.account_totals(user_id=_path_user_id(user_id)))


class AccountTransactionsView(APIView):
    required_scope = "points:read"
    pagination_class = NewestFirstCursorPagination

    @extend_schema(
        summary="A user's transactions, newest first (cursor-paginated)",
        responses={200: serializers.HistoryItemOut(many=True), **_errors(400, 401, 403, 404, 429)},
        tags=["points"],
    )
    def get(self, request, user_id: str):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(
            selectors.account_transactions(user_id=_path_user_id(user_id)), request, view=self
        )
        return paginator.get_paginated_response(serializers.HistoryItemOut(page, many=True).data)
