"""How many SQL statements each measured path runs (through the whole stack, in this process)."""

from __future__ import annotations

import json
import uuid

from .http import SOURCE


def _count(callable_):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        outcome = callable_()
    return outcome, [query["sql"] for query in captured.captured_queries]


def queries_measure(*, key: str) -> dict:
    """Statements per event POST, per credit POST, per ceiling POST and per dispatch of one event's
    actions as one batch, for users whose accounts exist (bench.app), as in the timed phases."""
    from django.test import Client

    from connect.delivery import reward_actions_dispatch
    from connect.models import RewardAction

    client = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Api-Key {key}")
    run = uuid.uuid4().hex[:8]

    def post(path: str, body: dict):
        return client.post(path, data=json.dumps(body), content_type="application/json")

    def event(n: int):
        return post(
            "/api/v1/events",
            {
                "external_id": f"q-{run}-{n}",
                "event_type": "quest.completed",
                "source_service": SOURCE,
                "actor_user_id": f"a-{n}",
                "primary_subject_user_id": f"s-{n}",
                "context": {"base_reward_points": 40, "total_quests_completed": 1},
            },
        )

    def credit(n: int):
        body = {"external_id": f"c-{run}-{n}", "user_id": f"c-{n}", "amount": 5, "reason": "bench"}
        return post("/internal/credit", body)

    event(0)  # warm: first-use work (system accounts, compiled rules) is not per request
    credit(0)
    response, event_sql = _count(lambda: event(1))
    if response.status_code != 201:
        raise RuntimeError(f"event POST answered {response.status_code}: {response.content[:300]!r}")
    _, credit_sql = _count(lambda: credit(1))
    _, ceiling_sql = _count(lambda: post("/internal/bench/ceiling", {"external_id": f"x-{run}"}))
    action_ids = list(RewardAction.objects.filter(event_id=response.json()["id"]).values_list("pk", flat=True))
    outcomes, dispatch_sql = _count(
        lambda: reward_actions_dispatch(first_ids=action_ids, limit=len(action_ids), others=False)
    )
    if len(outcomes) != len(action_ids):
        raise RuntimeError(f"dispatch claimed {len(outcomes)} of the event's {len(action_ids)} actions")
    return {
        "event_post": len(event_sql),
        "credit_post": len(credit_sql),
        "ceiling_post": len(ceiling_sql),
        "dispatch_actions": len(action_ids),
        "dispatch_batch": len(dispatch_sql),
        "statements": {"event_post": event_sql, "credit_post": credit_sql, "dispatch": dispatch_sql},
    }
