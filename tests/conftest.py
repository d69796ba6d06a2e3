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


@pytest.fixture(autouse=True)
def ledger_verified_after_the_test(request):
    """``verify_ledger`` passes after the whole suite: every test that used the database must leave a
    ledger whose invariants all hold, checked before its data is rolled back or flushed. A test that
    breaks the ledger on purpose (to see the check catch it) is marked ``ledger_broken``."""
    names = set(request.fixturenames)
    uses_db = request.node.get_closest_marker("django_db") or {"db", "transactional_db"} & names
    if not uses_db or request.node.get_closest_marker("ledger_broken"):
        yield
        return
    # Requested here, so the database outlives this fixture: the check runs before the rollback/flush.
    request.getfixturevalue("transactional_db" if "transactional_db" in names else "db")
    yield
    from points.verification import ledger_verify

    broken = {check.name: check.offenders for check in ledger_verify() if not check.ok}
    assert broken == {}, f"the test left the ledger inconsistent: {broken}"
