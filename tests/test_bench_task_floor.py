"""The benchmark's no-op drain (bench/e2e.py), with a real Celery worker on the benchmark's Redis
database: it measures a task the worker runs, and refuses a drain the worker only rejected."""

import pytest
import redis

from bench import e2e
from bench.common import REDIS_URL, BenchError
from config.celery import app

MESSAGES = 1000  # a few seconds' drain: the measuring starts once the worker says it is ready


@pytest.fixture(autouse=True)
def _empty_bench_redis():
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield
    client.flushdb()


@pytest.mark.filterwarnings("ignore::celery.exceptions.AlwaysEagerIgnored")  # these tests run with eager settings
def test_the_drain_measures_the_messages_the_worker_ran():
    result = e2e.task_floor_measure(messages=MESSAGES, workers=1)

    assert result["task"] == "celery.accumulate" and result["workers"] == 1
    assert MESSAGES // 2 <= result["messages"] <= MESSAGES
    assert result["per_s"] > 0
    assert 0 < result["worker_cpu_ms_per_message"] <= result["host_cpu_ms_per_message"]
    assert redis.Redis.from_url(REDIS_URL).dbsize() == 0  # flushed after the drain


@pytest.mark.filterwarnings("ignore::celery.exceptions.AlwaysEagerIgnored")
def test_a_drain_of_a_task_the_worker_does_not_know_is_refused(monkeypatch):
    # Registered in this process only: the worker rejects every message without running it.
    name = "tests.bench_only_noop"

    @app.task(name=name)
    def bench_only_noop(*args):
        return args

    monkeypatch.setattr(e2e, "NOOP_TASK", name)

    with pytest.raises(BenchError, match="did not know tests.bench_only_noop"):
        e2e.task_floor_measure(messages=MESSAGES, workers=1)


def test_a_task_celery_does_not_have_is_refused_before_anything_is_queued(monkeypatch):
    monkeypatch.setattr(e2e, "NOOP_TASK", "tests.no_such_task")

    with pytest.raises(BenchError, match="has no task tests.no_such_task"):
        e2e.task_floor_measure(messages=MESSAGES, workers=1)
    assert redis.Redis.from_url(REDIS_URL).dbsize() == 0
