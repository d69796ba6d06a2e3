"""Fixtures of the schema contract tests: the API served in-process, and one key of each kind."""

import pytest
from django.core.signals import request_finished, request_started
from django.db import close_old_connections

from points.models import SCOPES, ServiceClient, ServiceClientKey

# The scope each documented operation needs, by "METHOD path" as the schema spells it; a new
# operation must be added here (test_every_documented_operation_has_its_scope_listed). A tuple: any
# one of them lets the request in (what it then needs depends on its body).
OPERATION_SCOPES = {
    "POST /api/v1/events": "events:write",
    "GET /api/v1/events/{event_id}": "events:read",
    "GET /api/v1/events/{event_id}/trace": "events:read",
    "GET /api/v1/reward-actions": "events:read",
    "GET /api/v1/reward-actions/{action_id}": "events:read",
    "POST /internal/credit": "points:credit",
    "POST /internal/debit": "points:debit",
    "POST /internal/hold": "points:hold",
    "POST /internal/capture": "points:hold",
    "POST /internal/release": "points:hold",
    "GET /internal/accounts/{user_id}": "points:read",
    "GET /internal/accounts/{user_id}/transactions": "points:read",
    "GET /internal/accounts/{user_id}/lots": "points:read",
    "POST /internal/reverse": ("points:credit", "points:debit"),
    "POST /internal/batch": ("points:credit", "points:debit", "points:hold"),
}

CLIENT_NAME = "contract_service"


@pytest.fixture
def in_process_app():
    """The WSGI application is called directly, inside the test's transaction.

    Django closes "obsolete" connections when a request starts and finishes; inside a test
    transaction that would close the connection under the test (Django's own test client
    disconnects the same handlers).
    """
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def _key(name: str, scopes) -> str:
    client = ServiceClient.objects.create(name=name, scopes=sorted(scopes))
    return ServiceClientKey.objects.create_key(client=client, name=f"{name} key")[1]


@pytest.fixture
def keys(db):
    """``scoped``: every scope, as ``contract_service``; ``lacking[scope]``: every scope but that one
    (``lacking[(scope, ...)]``: every scope but those)."""
    needed = {scope for scope in OPERATION_SCOPES.values() if isinstance(scope, tuple)} | set(SCOPES)
    lacking = {}
    for scope in needed:
        lacked = set(scope) if isinstance(scope, tuple) else {scope}
        name = "without_" + "_".join(sorted(lacked)).replace(":", "_")
        lacking[scope] = _key(name, set(SCOPES) - lacked)
    return {"scoped": _key(CLIENT_NAME, SCOPES), "lacking": lacking}
