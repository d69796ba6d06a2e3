"""The framework's own ceiling: the same stack as the real endpoints, doing one INSERT.

Same middleware, API-key authentication, scope check, throttle, JSON parser, renderer and exception
handler as ``POST /internal/credit``; the work behind it is a single-row INSERT into a scratch table.
What the real endpoints reach against this is the share the domain logic costs.
"""

from django.db import connection
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

TABLE = "bench_ceiling"
_CREATE_SQL = f"""
    CREATE TABLE IF NOT EXISTS {TABLE} (
        id bigserial PRIMARY KEY,
        source varchar(100) NOT NULL,
        external_id varchar(200) NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )
"""
_INSERT_SQL = f"INSERT INTO {TABLE} (source, external_id) VALUES (%s, %s) RETURNING id"


def ceiling_table_ensure() -> None:
    """Create the scratch table (idempotent); the benchmark calls it once before any request."""
    with connection.cursor() as cursor:
        cursor.execute(_CREATE_SQL)


class CeilingView(APIView):
    required_scope = "points:credit"

    def post(self, request):
        external_id = request.data.get("external_id") if isinstance(request.data, dict) else None
        if not isinstance(external_id, str) or not 1 <= len(external_id) <= 200:
            raise ValidationError({"external_id": ["A string of 1 to 200 characters is required."]})
        with connection.cursor() as cursor:
            cursor.execute(_INSERT_SQL, [request.user.client_name, external_id])
            (row_id,) = cursor.fetchone()
        return Response({"id": row_id, "external_id": external_id}, status=201)
