import json

import pytest

from rules.demo import DEMO_RULES_PATH
from rules.services import rule_save_from_dict, rules_import

SEED_SERVICES = ("referral_service", "quest_service", "voucher_service", "rielt_service", "rf_service", "user_service")


@pytest.fixture
def demo_rules(db):
    rules_import(payload=json.loads(DEMO_RULES_PATH.read_text()))


@pytest.fixture
def make_rule(db):
    def make(code: str, event_type: str, rewards: list[dict], **fields):
        data = {
            "code": code, "name": code, "event_type": event_type, "condition": "", "priority": 100,
            "is_active": True, "stop_processing": False, "valid_from": None, "valid_until": None,
            **fields,
            "rewards": [
                {"params": {}, "lock_condition": "", "max_per_target": None, **reward} for reward in rewards
            ],
        }  # fmt: skip
        rule, _ = rule_save_from_dict(data=data)
        return rule

    return make


@pytest.fixture
def services(api_for):
    """An API client per seed service, each allowed to write and read events."""
    return {name: api_for(name, ["events:write", "events:read"]) for name in SEED_SERVICES}


@pytest.fixture
def post_event():
    def post(api, **body):
        return api.post("/api/v1/events", body, format="json")

    return post


@pytest.fixture
def threaded_httpserver():
    """A local HTTP server answering requests in parallel (pytest-httpserver's own fixture answers one
    at a time, which would make concurrent calls wait on each other)."""
    from pytest_httpserver import HTTPServer

    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    try:
        yield server
    finally:
        server.clear()
        if server.is_running():
            server.stop()
