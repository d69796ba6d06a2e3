"""Thin HTTP views of the event inbox (SPEC §5)."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.response import Response

from config.api.errors import NotFound
from config.api.pagination import NewestFirstCursorPagination
from config.api.schema import COMMON_ERRORS, WRITE_ERRORS, error_responses
from config.api.views import ApiView

from . import selectors, serializers
from .intake import event_input_validated, event_source_check
from .services import event_ingest

_FORBIDDEN_EVENT = (
    "The key lacks `events:write` (or a prefix of it covering this event type), or source_service is not "
    "the calling client (`permission_denied`)."
)


def _uuid_path(name: str, what: str) -> OpenApiParameter:
    return OpenApiParameter(
        name, OpenApiTypes.UUID, OpenApiParameter.PATH, description=f"The {what}'s id (a UUID; another text is a 404)."
    )


class EventsView(ApiView):
    required_scope = "events:write"

    @extend_schema(
        summary="Post a business event",
        request=serializers.EventIn,
        examples=[
            OpenApiExample(
                "Request",
                value={
                    "external_id": "quest-42-user-7",
                    "event_type": "quest.completed",
                    "source_service": "quest_service",
                    "actor_user_id": "user-7",
                    "primary_subject_user_id": "user-3",
                    "context": {"base_reward_points": 100, "total_quests_completed": 10},
                    "occurred_at": "2025-01-01T12:00:00Z",
                },
                request_only=True,
            )
        ],
        responses={
            201: OpenApiResponse(serializers.EventOut, description="Stored and processed."),
            200: OpenApiResponse(
                serializers.EventOut, description="A replay: the stored event, actions' current statuses."
            ),
            **error_responses(*WRITE_ERRORS, refusals=("original_event_not_found", "not_reversible")),
            403: OpenApiResponse(error_responses(403)[403].response, description=_FORBIDDEN_EVENT),
        },
        tags=["events"],
    )
    def post(self, request):
        data = event_input_validated(request.data)
        principal = request.user
        event_source_check(principal=principal, data=data)
        result = event_ingest(client_name=principal.client_name, data=data)
        if result.actions is None:  # a replay: the actions as they are now
            body = serializers.EventOut(selectors.event_with_actions(event_id=result.event.pk)).data
        else:  # what this request stored, as committed
            body = serializers.event_out_data(result.event, selectors.actions_in_read_order(result.actions))
        return Response(body, status=200 if result.replayed else 201)


class EventDetailView(ApiView):
    required_scope = "events:read"

    @extend_schema(
        summary="An event with its reward actions",
        parameters=[_uuid_path("event_id", "event")],
        responses={200: serializers.EventOut, **error_responses(*COMMON_ERRORS, 404)},
        tags=["events"],
    )
    def get(self, request, event_id):
        event = selectors.event_with_actions(event_id=event_id)
        if event is None:
            raise NotFound("No such event.")
        return Response(serializers.EventOut(event).data)


class EventTraceView(ApiView):
    required_scope = "events:read"

    @extend_schema(
        summary="Why an event got what it got (its decision trace)",
        parameters=[_uuid_path("event_id", "event")],
        responses={200: serializers.EventTraceOut, **error_responses(*COMMON_ERRORS, 404)},
        tags=["events"],
    )
    def get(self, request, event_id):
        event = selectors.event_get(event_id=event_id)
        if event is None:
            raise NotFound("No such event.")
        return Response(serializers.event_trace_data(event))


class RewardActionListView(ApiView):
    required_scope = "events:read"
    pagination_class = NewestFirstCursorPagination

    @extend_schema(
        summary="Reward actions, newest first (cursor-paginated)",
        parameters=[serializers.RewardActionFilter],
        responses={
            200: serializers.RewardActionOut(many=True),
            **error_responses(*COMMON_ERRORS, 404, not_found="An invalid cursor (`not_found`)."),
        },
        tags=["events"],
    )
    def get(self, request):
        # A plain dict, not the QueryDict: DRF reads an empty form value of an optional field as
        # "not given", and "?status=" would silently list everything instead of being refused.
        filters = serializers.RewardActionFilter(data=request.query_params.dict())
        filters.is_valid(raise_exception=True)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(
            selectors.reward_actions_filtered(**filters.validated_data), request, view=self
        )
        return paginator.get_paginated_response(serializers.RewardActionOut(page, many=True).data)


class RewardActionDetailView(ApiView):
    required_scope = "events:read"

    @extend_schema(
        summary="One reward action",
        parameters=[_uuid_path("action_id", "reward action")],
        responses={200: serializers.RewardActionOut, **error_responses(*COMMON_ERRORS, 404)},
        tags=["events"],
    )
    def get(self, request, action_id):
        action = selectors.reward_actions_filtered().filter(pk=action_id).first()
        if action is None:
            raise NotFound("No such reward action.")
        return Response(serializers.RewardActionOut(action).data)
