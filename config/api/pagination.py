from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils.dateparse import parse_datetime
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination


class NewestFirstCursorPagination(CursorPagination):
    """Cursor pages, newest first.

    ``page_size`` must be a positive integer (anything else is a 400, not silently the default);
    above API_MAX_PAGE_SIZE it is capped. A cursor that was not issued by the API is a 404.
    """

    ordering = ("-created_at", "-id")
    page_size_query_param = "page_size"

    def __init__(self):
        # Read per request, not at import, so the limits follow the settings in force.
        self.page_size = settings.API_PAGE_SIZE
        self.max_page_size = settings.API_MAX_PAGE_SIZE

    def get_page_size(self, request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
            raise ValidationError({self.page_size_query_param: ["A positive integer is required."]})
        return min(int(raw), self.max_page_size)

    def decode_cursor(self, request):
        cursor = super().decode_cursor(request)
        # The position is compared with created_at: text that is not a timestamp would only fail in
        # the database query, as a server error.
        if cursor is not None and cursor.position is not None and not _is_timestamp(cursor.position):
            raise NotFound(self.invalid_cursor_message)
        return cursor

    def get_schema_operation_parameters(self, view):
        return [
            {
                "name": self.cursor_query_param,
                "required": False,
                "in": "query",
                "description": "Opaque cursor from the `next` or `previous` link of a page; an invalid one is a 404.",
                "schema": {"type": "string"},
            },
            {
                "name": self.page_size_query_param,
                "required": False,
                "in": "query",
                "description": (
                    f"Items per page (default {settings.API_PAGE_SIZE}); larger values are capped at "
                    f"API_MAX_PAGE_SIZE ({settings.API_MAX_PAGE_SIZE})."
                ),
                "schema": {"type": "integer", "minimum": 1},
            },
        ]

    def get_paginated_response_schema(self, schema):
        link = {"type": "string", "format": "uri", "nullable": True}
        return {
            "type": "object",
            "properties": {
                "results": schema,
                "next": {**link, "description": "The next (older) page, or null on the last page."},
                "previous": {**link, "description": "The previous (newer) page, or null on the first page."},
            },
            "required": ["results", "next", "previous"],
            "additionalProperties": False,
        }


class SoonestExpiryCursorPagination(NewestFirstCursorPagination):
    """Cursor pages of lots, soonest expiry first: the queryset annotates ``expiry_order`` (never last)."""

    ordering = ("expiry_order", "created_at", "id")

    def get_paginated_response_schema(self, schema):
        response = super().get_paginated_response_schema(schema)
        response["properties"]["next"]["description"] = "The next (later expiring) page, or null on the last page."
        response["properties"]["previous"]["description"] = "The previous page, or null on the first page."
        return response


def _is_timestamp(value: str) -> bool:
    try:
        return parse_datetime(value) is not None
    except (ValueError, DjangoValidationError):
        return False
