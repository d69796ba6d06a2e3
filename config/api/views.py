from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import api_view, authentication_classes, permission_classes, throttle_classes
from rest_framework.views import APIView

from .errors import json_error
from .middleware import is_api_path


class ApiView(APIView):
    """An API view whose callers are throttled before anything else about them is judged.

    DRF checks throttles last, after authentication and permissions: a request with no key, a bad
    key or a key without the scope is refused before it counts, so guessing keys or hammering an
    endpoint without the right key would never be slowed down. Here the throttles run right after
    authentication (a failed one leaves the caller anonymous, limited per IP), once per request.
    """

    def perform_authentication(self, request):
        try:
            super().perform_authentication(request)
        finally:
            self.check_throttles(request)

    def check_throttles(self, request):
        if getattr(request, "_throttles_checked", False):
            return
        request._throttles_checked = True
        super().check_throttles(request)


@require_GET
def health(request):
    """Liveness with dependencies: 200 when the database answers, 503 when it does not."""
    checks = {}
    healthy = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception:
        checks["database"] = "unavailable"
        healthy = False
    if settings.CELERY_BROKER_URL:
        checks["broker"] = _broker_status()
    return JsonResponse(
        {"status": "ok" if healthy else "unavailable", "checks": checks}, status=200 if healthy else 503
    )


def _broker_status() -> str:
    from config.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return "ok"
    except Exception:
        return "unavailable"


@extend_schema(exclude=True)
@api_view(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
@authentication_classes([])
@permission_classes([])
@throttle_classes([])
def api_not_found(request, *args, **kwargs):
    return JsonResponse({"error": {"code": "not_found", "message": "No such endpoint.", "details": {}}}, status=404)


def bad_request(request, exception=None):
    """Django's own 400s (a Host header not in ALLOWED_HOSTS, a malformed request) in the API's format."""
    if is_api_path(request.path):
        return json_error(400, "validation_error", "The request is malformed.")
    from django.views.defaults import bad_request as html_bad_request

    return html_bad_request(request, exception)


def permission_denied(request, exception=None):
    if is_api_path(request.path):
        return json_error(403, "permission_denied", "Permission denied.")
    from django.views.defaults import permission_denied as html_permission_denied

    return html_permission_denied(request, exception)


def server_error(request, *args, **kwargs):
    if is_api_path(request.path):
        return json_error(500, "internal_error", "An internal error occurred.")
    from django.views.defaults import server_error as html_server_error

    return html_server_error(request, *args, **kwargs)


def not_found(request, exception=None):
    if is_api_path(request.path):
        return json_error(404, "not_found", "No such endpoint.")
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


@require_GET
def metrics(request):
    """Prometheus text format; keep it on the private network (see docs/security.md)."""
    import prometheus_client

    from config.metrics import render_latest

    return HttpResponse(render_latest(), content_type=prometheus_client.CONTENT_TYPE_LATEST)
