"""Thin HTTP views of the event inbox (SPEC §5)."""

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api.errors import NotFound
from config.api.fields import ErrorSerializer
from config.api.pagination import NewestFirstCursorPagination

from . import selectors, serializers
from .services import event_ingest


def _errors(*codes: int) -> dict:
    described = {
        400: "Invalid input (`validation_error`); nothing stored.",
        401: "Missing or invalid API key (`not_authenticated`).",
        403: "The key lacks the scope, or source_service is not the caller (`permission_denied`).",
        404: "Not found (`not_found`).",
        409: "The external_id was used with a different payload (`idempotency_conflict`).",
        413: "The request body is too large (`request_too_large`).",
        429: "Too many requests (`throttled`); see Retry-After.",
    }
    return {code: OpenApiResponse(ErrorSerializer, description=described[code]) for code in codes}


class EventsView(APIView):
    required_scope = "events:write"

    @extend_schema(
        summary="Post a business event",
        request=serializers.EventIn,
        responses={
            201: OpenApiResponse(serializers.EventOut, description="Stored and processed."),
            200: OpenApiResponse(
                serializers.EventOut, description="A replay: the stored event, actions' current statuses."
            ),
            **_errors(400, 401, 403, 409, 413, 429),
        },
        tags=["events"],
    )
    def post(self, request):
        serializer = serializers.EventIn(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        principal = request.user
        if data["source_service"] != principal.client_name:
            raise PermissionDenied("source_service must be the calling client's name.")
        if not principal.may_write_event_type(data["event_type"]):
            raise PermissionDenied(f"This key may not post events of type '{data['event_type']}'.")
        result = event_ingest(client_name=principal.client_name, data=data)
        event = selectors.event_with_actions(event_id=result.event.pk)
        return Response(serializers.EventOut(event).data, status=200 if result.replayed else 201)


class EventDetailView(APIView):
    required_scope = "events:read"

    @extend_schema(
        summary="An event with its reward actions",
        responses={200: serializers.EventOut, **_errors(401, 403, 404, 429)},
        tags=["events"],
    )
    def get(self, request, event_id):
        event = selectors.event_with_actions(event_id=event_id)
        if event is None:
            raise NotFound("No such event.")
        return Response(serializers.EventOut(event).data)


class RewardActionListView(APIView):
    required_scope = "events:read"
    pagination_class = NewestFirstCursorPagination

    @extend_schema(
        summary="Reward actions, newest first (cursor-paginated)",
        parameters=[
            OpenApiParameter("target_user_id", str),
            OpenApiParameter("status", str, enum=[c for c, _ in serializers.RewardAction.Status.choices]),
            OpenApiParameter("reward_type", str, enum=[c for c, _ in serializers.RewardAction.RewardType.choices]),
            OpenApiParameter("event_id", str),
        ],
        responses={200: serializers.RewardActionOut(many=True), **_errors(400, 401, 403, 429)},
        tags=["events"],
    )
    def get(self, request):
        filters = serializers.RewardActionFilter(data=request.query_params)
        filters.is_valid(raise_exception=True)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(
            selectors.reward_actions_filtered(**filters.validated_data), request, view=self
        )
        return paginator.get_paginated_response(serializers.RewardActionOut(page, many=True).data)


class RewardActionDetailView(APIView):
    required_scope = "events:read"

    @extend_schema(
        summary="One reward action",
        responses={200: serializers.RewardActionOut, **_errors(401, 403, 404, 429)},
        tags=["events"],
    )
    def get(self, request, action_id):
        action = selectors.reward_actions_filtered().filter(pk=action_id).first()
        if action is None:
            raise NotFound("No such reward action.")
        return Response(serializers.RewardActionOut(action).data)
