"""Event bodies that must be refused with a 400 (or make the event ``failed``), never a 500 (SPEC §4, §5)."""

import json

import pytest

from connect.models import EconomicEvent, RewardAction, UserProfile
from points.models import Transaction

pytestmark = pytest.mark.django_db

BODY = {
    "external_id": "evt-1",
    "event_type": "quest.completed",
    "source_service": "quest_service",
    "actor_user_id": "player",
    "context": {},
}


@pytest.fixture
def quest(api_for):
    return api_for("quest_service", ["events:write", "events:read"])


def nested(depth: int) -> dict:
    """A JSON object ``depth`` levels deep: {"a": {"a": ... {} }}."""
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def nothing_written() -> bool:
    return not (
        EconomicEvent.objects.exists()
        or RewardAction.objects.exists()
        or UserProfile.objects.exists()
        or Transaction.objects.exists()
    )


def raw(api, text: str):
    return api.generic("POST", "/api/v1/events", text.encode("utf-8", "surrogatepass"), content_type="application/json")


def error(response, status: int, code: str = "validation_error") -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    return body["error"]["details"]


def test_context_nested_32_levels_in_the_body_is_stored(quest):
    # The body itself is one level, so the context may hold 31 more.
    response = quest.post("/api/v1/events", {**BODY, "context": nested(31)}, format="json")
    assert response.status_code == 201, response.content


@pytest.mark.parametrize("depth", [33, 100, 900, 5_000])
def test_context_nested_deeper_than_32_levels_is_400(quest, depth):
    context = '{"a": ' * (depth - 1) + "{}" + "}" * (depth - 1)  # json.dumps itself would recurse
    details = error(raw(quest, json.dumps(BODY).replace('"context": {}', f'"context": {context}')), 400)
    assert details == {"body": ["JSON nested deeper than 32 levels."]}
    assert nothing_written()


_FIELDS = '"event_type": "quest.completed", "source_service": "quest_service", "actor_user_id": "player"'


@pytest.mark.parametrize(
    "text, key",
    [
        ('{"external_id": "a", "external_id": "b", ' + _FIELDS + "}", "external_id"),
        ('{"external_id": "a", ' + _FIELDS + ', "context": {"points": 1, "points": 7}}', "points"),
        ('{"external_id": "a", ' + _FIELDS + ', "context": {"l": [{"x": {"k": 1, "k": 1}}]}}', "k"),
    ],
    ids=["top-level", "in-context", "deep-in-a-list"],
)
def test_a_duplicate_key_anywhere_is_400(quest, text, key):
    details = error(raw(quest, text), 400)
    assert details == {"body": [f"Duplicate key {key!r} in a JSON object."]}
    assert nothing_written()


@pytest.mark.parametrize("text", ['"\\u0000"', '"\\ud800"', '"a\\udfffb"'], ids=["nul", "high-surrogate", "low"])
@pytest.mark.parametrize("where", ["context", "actor_user_id", "external_id"])
def test_nul_and_lone_surrogates_are_400(quest, text, where):
    body = json.dumps({**BODY, where: "PLACEHOLDER" if where != "context" else {"k": "PLACEHOLDER"}})
    details = error(raw(quest, body.replace('"PLACEHOLDER"', text)), 400)
    assert list(details) == [where]
    assert nothing_written()


@pytest.mark.parametrize("user_id", ["a/b", "tab\there", "line\n", " lead", "trail ", "\x7f", "x" * 101, ""])
@pytest.mark.parametrize("field", ["actor_user_id", "primary_subject_user_id"])
def test_invalid_user_ids_are_400(quest, field, user_id):
    details = error(quest.post("/api/v1/events", {**BODY, field: user_id}, format="json"), 400)
    assert list(details) == [field]
    assert nothing_written()


def test_an_invalid_user_id_filter_is_400(quest):
    details = error(quest.get("/api/v1/reward-actions", {"target_user_id": "a/b"}), 400)
    assert list(details) == ["target_user_id"]


@pytest.mark.parametrize(
    "target",
    [
        "'\\ud800' + actor",
        "actor + '/x'",
        "' ' + actor",
        "actor + '\\n'",
        "'\\x00' + actor",
        "upline('\\ud800' + actor, 1)",
        "upline(actor + '\\x00', 1)",
    ],
    ids=["lone-surrogate", "slash", "leading-space", "trailing-newline", "nul", "upline-surrogate", "upline-nul"],
)
@pytest.mark.parametrize("lock", ["", "vip_or_pro"])
def test_a_rule_target_that_is_not_a_user_id_fails_the_event(quest, make_rule, target, lock):
    make_rule(
        "bad_target",
        "quest.completed",
        [{"target": target, "reward_type": "points", "amount": "5", "lock_condition": lock}],
    )
    response = quest.post("/api/v1/events", BODY, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "failed"
    assert "bad_target" in body["error"] and "not a" in body["error"] and "user id" in body["error"]
    assert body["reward_actions"] == [] and not RewardAction.objects.exists()
    # Stored, so a retry is a replay and not another failure of the server.
    again = quest.post("/api/v1/events", BODY, format="json")
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    assert EconomicEvent.objects.get().status == "failed"
