"""Health, error format, schema and service-client plumbing shared by both services."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db.utils import OperationalError
from django.test import override_settings
from django.urls import path
from rest_framework.test import APIClient
from rest_framework.views import APIView

from points.models import ServiceClient, ServiceClientKey


def test_health_reports_database(client, db):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["checks"]["database"] == "ok"


def test_health_is_503_when_the_database_is_down(client, db, monkeypatch, settings):
    from config.api import views

    settings.CELERY_BROKER_URL = ""  # only the database is checked, whatever broker the run is given

    class Broken:
        def __enter__(self):
            raise OperationalError("connection refused")

        def __exit__(self, *args):
            return False

    class DownDatabase:
        def cursor(self):
            return Broken()

    monkeypatch.setattr(views, "connection", DownDatabase())
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "checks": {"database": "unavailable"}}


def test_health_reports_broker_when_configured(client, db, settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:6379/9"
    assert client.get("/health/").json()["checks"]["broker"] == "ok"


@pytest.mark.parametrize("path", ["/api/v1/nope", "/internal/nope", "/api", "/internal/accounts/u/x/y"])
def test_unknown_api_paths_answer_json_404(api, path):
    response = api.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_wrong_method_is_json_405(api):
    response = api.get("/internal/credit")
    assert response.status_code == 405
    assert response.json()["error"] == {
        "code": "method_not_allowed",
        "message": 'Method "GET" not allowed.',
        "details": {},
    }


class Exploding(APIView):
    authentication_classes = []
    permission_classes = []

    def get(self, request):
        raise RuntimeError("SELECT secret FROM table")


urlpatterns = [path("api/v1/explode", Exploding.as_view())]


@override_settings(ROOT_URLCONF=__name__)
def test_unexpected_errors_are_json_500_without_details(db):
    response = APIClient().get("/api/v1/explode")
    assert response.status_code == 500
    assert response.json() == {
        "error": {"code": "internal_error", "message": "An internal error occurred.", "details": {}}
    }
    assert b"SELECT" not in response.content and b"Traceback" not in response.content


def test_body_too_large_is_413(api, settings):
    settings.API_MAX_BODY_BYTES = 1000
    response = api.post("/internal/credit", {"external_id": "x" * 2000}, format="json")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_schema_and_docs_need_no_key(client, db):
    schema = client.get("/api/schema")
    assert schema.status_code == 200
    assert b"/internal/credit" in schema.content and b"/api/v1/events" in schema.content
    assert client.get("/api/docs").status_code == 200


def test_create_service_client_prints_the_key_last(db):
    out = StringIO()
    call_command(
        "create_service_client", "quest_service", "--scopes", "points:credit", "events:write:quest.", stdout=out
    )
    key = out.getvalue().strip().splitlines()[-1]
    client = ServiceClient.objects.get(name="quest_service")
    assert client.scopes == ["events:write:quest.", "points:credit"]
    assert ServiceClientKey.objects.get_from_key(key).client == client
    assert key not in {k.hashed_key for k in ServiceClientKey.objects.all()}, "only the hash is stored"
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    assert api.get("/internal/accounts/u1").status_code == 403  # no points:read
    assert (
        api.post("/internal/credit", {"external_id": "a", "user_id": "u", "amount": 1}, format="json").status_code
        == 201
    )


def test_create_service_client_refuses_unknown_scopes_and_duplicates(db):
    with pytest.raises(CommandError, match="Unknown scope"):
        call_command("create_service_client", "x", "--scopes", "points:everything", stdout=StringIO())
    call_command("create_service_client", "x", "--scopes", "points:read", stdout=StringIO())
    with pytest.raises(CommandError, match="exists"):
        call_command("create_service_client", "x", "--scopes", "points:read", stdout=StringIO())
    out = StringIO()
    call_command("create_service_client", "x", "--scopes", "points:read", "--new-key", stdout=out)
    assert ServiceClientKey.objects.filter(client__name="x").count() == 2


def test_revoked_and_inactive_clients_are_refused(make_client):
    client, key = make_client("svc", ["points:read"])
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    assert api.get("/internal/accounts/u").status_code == 200
    ServiceClient.objects.filter(pk=client.pk).update(is_active=False)
    assert api.get("/internal/accounts/u").status_code == 401
    ServiceClient.objects.filter(pk=client.pk).update(is_active=True)
    ServiceClientKey.objects.filter(client=client).update(revoked=True)
    response = api.get("/internal/accounts/u")
    assert response.status_code == 401 and response.json()["error"]["code"] == "not_authenticated"
