"""The API against its own OpenAPI schema (schemathesis, in-process WSGI), with each kind of key.

Every documented operation is called with generated requests — valid ones and ones that break the
schema on purpose (the coverage phase's boundary cases and random fuzzing) — and every response is
checked: never a server error, a documented status code, a body and headers exactly as documented,
invalid input refused, authentication enforced. The runs are seeded and derandomized, so CI sees
the same requests every time; a finding is a bug to fix in the API or the schema, never to exclude.
"""

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.db import transaction
from django.urls import resolve
from hypothesis import HealthCheck, settings

from connect.services import event_ingest
from points import services as ledger
from rules.demo import DEMO_RULES_PATH

from .conftest import CLIENT_NAME, OPERATION_SCOPES

APP = WSGIHandler()
SEED = 20250101

# The checks every response must pass. `ignored_auth` re-sends a request without the key and with
# a wrong one when a keyed request succeeded; `unsupported_method` tries undocumented methods.
RESPONSE_CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.negative_data_rejection,
    schemathesis.checks.ignored_auth,
    schemathesis.checks.unsupported_method,
    schemathesis.checks.missing_required_header,
]


def _config(
    *,
    max_examples: int,
    modes=("all",),
    allow_x00: bool = True,
    keyed: bool = True,
    positive_statuses=None,
    stateful: bool = False,
) -> schemathesis.Config:
    checks = {"positive_data_acceptance": {"enabled": positive_statuses is not None}}
    if positive_statuses is not None:
        checks["positive_data_acceptance"]["expected-statuses"] = positive_statuses
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {
                "mode": modes[0],
                "max-examples": max_examples,
                "deterministic": True,
                "database": "none",
                "allow-x00": allow_x00,
                # With a key the test sends it itself; without one, generated Authorization values are fuzzed.
                "with-security-parameters": not keyed,
            },
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": stateful},
            },
            "checks": checks,
        }
    )


schema = schemathesis.openapi.from_wsgi("/api/schema", APP, config=_config(max_examples=30))
# Refused before the body is read: few examples show it, the coverage phase's cases are the rest.
unscoped = schemathesis.openapi.from_wsgi("/api/schema", APP, config=_config(max_examples=8))
unauthenticated = schemathesis.openapi.from_wsgi("/api/schema", APP, config=_config(max_examples=8, keyed=False))
# Valid requests with the right key: anything but 2xx, or a documented refusal of valid input
# (unknown hold 404, reused external_id 409, business refusal 422), is a finding. NUL characters
# are left out here: they are valid JSON but never storable text, refused with a 400 by design.
positive = schemathesis.openapi.from_wsgi(
    "/api/schema",
    APP,
    config=_config(
        max_examples=25, modes=("positive",), allow_x00=False, positive_statuses=["2xx", "404", "409", "422"]
    ),
)

FUZZ_SETTINGS = settings(
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)


@pytest.fixture
def ledger_and_events(keys):
    """Data the generated requests can meet: demo rules, an event with actions, ``alice``'s history."""
    import json

    from rules.services import rules_import

    rules_import(payload=json.loads(DEMO_RULES_PATH.read_text()))
    event_ingest(
        client_name=CLIENT_NAME,
        data={
            "external_id": "seed-1",
            "event_type": "quest.completed",
            "actor_user_id": "alice",
            "primary_subject_user_id": "bob",
            "context": {"base_reward_points": 40, "total_quests_completed": 10},
            "occurred_at": None,
        },
    )
    ledger.account_credit(source=CLIENT_NAME, external_id="seed-credit", user_id="alice", amount=500)
    ledger.hold_create(source=CLIENT_NAME, external_id="seed-hold", user_id="alice", amount=100)


def _authorization(key: str) -> dict:
    return {"Authorization": f"Api-Key {key}"}


def _as_the_caller(case) -> None:
    """A valid event names its caller as source_service (any other name is a 403, tested elsewhere),
    and gives a reversal_fraction only with reverses_external_id (a rule across two fields, which
    OpenAPI 3.0 cannot state; the field's description does, and tests/connect pin the 400)."""
    if (
        case.operation.label == "POST /api/v1/events"
        and case.meta is not None
        and case.meta.generation.mode.is_positive
        and isinstance(case.body, dict)
        and isinstance(case.body.get("source_service"), str)
    ):
        case.body["source_service"] = CLIENT_NAME
        if case.body.get("reverses_external_id") is None:
            case.body.pop("reversal_fraction", None)


def _sent_key(response) -> str | None:
    """The key the request carried (the coverage phase also sends requests without one)."""
    keyword, _, key = (response.request.headers.get("Authorization") or "").partition(" ")
    return key if keyword == "Api-Key" else None


def _reached_the_operation(response) -> bool:
    """False when the generated path matched no route at all (answered 404 before authentication)."""
    from urllib.parse import unquote, urlsplit

    from config.api.views import api_not_found

    try:
        return resolve(unquote(urlsplit(response.request.url).path)).func is not api_not_found
    except Exception:
        return False


@schema.parametrize()
@FUZZ_SETTINGS
def test_with_the_right_key(case, keys, ledger_and_events, in_process_app):
    _as_the_caller(case)
    response = case.call_and_validate(headers=_authorization(keys["scoped"]), checks=RESPONSE_CHECKS)
    if _sent_key(response) == keys["scoped"]:
        assert response.status_code not in (401, 403), response.text


@unscoped.parametrize()
@FUZZ_SETTINGS
def test_with_a_key_lacking_the_scope(case, keys, in_process_app):
    key = keys["lacking"][OPERATION_SCOPES[case.operation.label]]
    response = case.call_and_validate(headers=_authorization(key), checks=RESPONSE_CHECKS)
    if _reached_the_operation(response) and response.request.method == case.method.upper():
        expected = (403, "permission_denied") if _sent_key(response) == key else (401, "not_authenticated")
        assert (response.status_code, response.json()["error"]["code"]) == expected, response.text


@unauthenticated.parametrize()
@FUZZ_SETTINGS
def test_without_a_key(case, db, in_process_app):
    # No explicit key: schemathesis sends none, or a generated (never valid) Authorization value.
    response = case.call_and_validate(checks=RESPONSE_CHECKS)
    if _reached_the_operation(response) and response.request.method == case.method.upper():
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "not_authenticated"
        assert response.headers["www-authenticate"] == ["Api-Key"]


@positive.parametrize()
@FUZZ_SETTINGS
def test_valid_requests_with_the_right_key_are_accepted(case, keys, ledger_and_events, in_process_app):
    _as_the_caller(case)
    case.call_and_validate(
        headers=_authorization(keys["scoped"]),
        checks=[*RESPONSE_CHECKS, schemathesis.checks.positive_data_acceptance],
    )


def test_every_documented_operation_has_its_scope_listed():
    documented = {operation.label for operation in (result.ok() for result in schema.get_all_operations())}
    assert documented == set(OPERATION_SCOPES)


stateful = schemathesis.openapi.from_wsgi("/api/schema", APP, config=_config(max_examples=25, stateful=True))
STATEFUL_CHECKS = [
    *RESPONSE_CHECKS,
    schemathesis.checks.use_after_free,
    schemathesis.checks.ensure_resource_availability,
]


@pytest.mark.parametrize("area", ["^/internal/", "^/api/v1/"], ids=["ledger", "events"])
def test_linked_operations_with_the_right_key(area, keys, ledger_and_events, in_process_app):
    """Sequences that follow the schema's links: credit → hold → capture/release, event → its actions."""
    headers = _authorization(keys["scoped"])

    class Workflow(stateful.include(path_regex=area).as_state_machine()):
        # Each scenario starts from the same data: its writes are rolled back when it ends, so a
        # replayed scenario meets the same answers (Hypothesis requires it).
        def setup(self):
            self.scenario = transaction.atomic()
            self.scenario.__enter__()

        def teardown(self):
            transaction.set_rollback(True)
            self.scenario.__exit__(None, None, None)

        def before_call(self, case):
            _as_the_caller(case)

        def get_call_kwargs(self, case):
            return {"headers": headers}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(response, checks=STATEFUL_CHECKS, headers=headers, transport_kwargs=kwargs)
            if _sent_key(response) == keys["scoped"]:
                assert response.status_code not in (401, 403), response.text

    Workflow.run(
        settings=settings(
            max_examples=25,
            stateful_step_count=8,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
    )
