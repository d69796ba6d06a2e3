import pytest
from rest_framework.test import APIClient

from points.models import SCOPES, ServiceClient, ServiceClientKey


@pytest.fixture
def make_client(db):
    """Creates a service client with the given scopes; returns (ServiceClient, raw key)."""

    def make(name: str = "quest_service", scopes=SCOPES):
        client = ServiceClient.objects.create(name=name, scopes=list(scopes))
        _, key = ServiceClientKey.objects.create_key(client=client, name=f"{name} key")
        return client, key

    return make


@pytest.fixture
def api_for(make_client):
    """An APIClient authenticated as a new service client with the given scopes."""

    def make(name: str = "quest_service", scopes=SCOPES) -> APIClient:
        _, key = make_client(name, scopes)
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
        return api

    return make


@pytest.fixture
def api(api_for) -> APIClient:
    return api_for()
