import pytest


@pytest.mark.usefixtures("db")
def test_metrics_expose_ingestion_and_outbox_state(client, api_for, make_rule_for_metrics):
    api = api_for("quest_service", ["events:write"])
    body = {
        "external_id": "m1",
        "event_type": "quest.completed",
        "source_service": "quest_service",
        "actor_user_id": "p",
    }
    assert api.post("/api/v1/events", body, format="json").status_code == 201
    assert (
        api.post(
            "/api/v1/events", {**body, "external_id": "m2", "event_type": "nobody.cares"}, format="json"
        ).status_code
        == 201
    )
    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.content.decode()
    assert 'rewards_events_ingested_total{event_type="quest.completed",status="processed"}' in text
    assert 'rewards_events_ingested_total{event_type="unmatched",status="ignored"}' in text
    assert 'rewards_reward_actions{channel="points",status="pending"} 1.0' in text
    assert "django_http_requests_total_by_method_total" in text


@pytest.fixture
def make_rule_for_metrics(db):
    from rules.services import rule_save_from_dict

    rule_save_from_dict(
        data={
            "code": "metrics_rule", "name": "m", "event_type": "quest.completed",
            "rewards": [{"target": "actor", "reward_type": "points", "amount": "3"}],
        }
    )  # fmt: skip
