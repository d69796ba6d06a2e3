"""The Redis cache backend keeps one redis-py client per connection pool (config/cache.py)."""

import json
import os
import uuid

import pytest

from config.cache import RedisCache

from .test_deploy import _manage

CACHE_URL = os.environ.get("TEST_CACHE_REDIS_URL") or "redis://127.0.0.1:6379/4"


@pytest.fixture
def cache():
    backend = RedisCache(CACHE_URL, {"KEY_PREFIX": f"t{uuid.uuid4().hex[:8]}"})
    yield backend
    backend.clear()  # FLUSHDB of the test's own Redis database


def test_operations_share_one_client_and_behave_as_django_s_backend(cache):
    client = cache._cache.get_client(write=True)

    cache.set("history", [1.5, 2.5], timeout=30)
    assert cache.get("history") == [1.5, 2.5]
    assert cache.add("history", "other") is False
    cache.set("counter", 1)
    assert cache.incr("counter", 5) == 6
    cache.delete("history")
    assert cache.get("history", "gone") == "gone"

    assert cache._cache.get_client(write=True) is client
    assert cache._cache.get_client(write=False) is client  # one server: reads use the same pool


def test_a_redis_cache_url_selects_this_backend():
    shown = "import django, json; django.setup(); from django.conf import settings; print(json.dumps(settings.CACHES))"
    result = _manage(python=shown, CACHE_URL="rediscache://127.0.0.1:6379/4", SECRET_KEY="x" * 50, DEBUG="1")
    assert result.returncode == 0, result.stderr
    caches = json.loads(result.stdout.strip().splitlines()[-1])
    assert caches["default"]["BACKEND"] == "config.cache.RedisCache"

    result = _manage(python=shown, SECRET_KEY="x" * 50, DEBUG="1")  # no CACHE_URL: in-process memory
    assert json.loads(result.stdout.strip().splitlines()[-1])["default"]["BACKEND"].endswith("LocMemCache")
