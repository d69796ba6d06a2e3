"""Django's Redis cache with one ``redis.Redis`` client per connection pool instead of one per call.

Django's ``RedisCacheClient.get_client`` builds a new ``redis.Redis`` for every cache operation, and
redis-py's constructor copies its table of response callbacks each time: about 0.15 ms of CPU per
operation on the benchmark machine, two per API request (the throttle's read and write). A client
holds no per-command state (each command takes a connection from the pool), so one per pool does
the same work; it is created on first use, in the process that uses it.
"""

from django.core.cache.backends import redis as django_redis


class RedisCacheClient(django_redis.RedisCacheClient):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._clients = {}

    def get_client(self, key=None, *, write=False):
        index = self._get_connection_pool_index(write)
        client = self._clients.get(index)
        if client is None:
            client = self._clients[index] = self._client(connection_pool=self._get_connection_pool(write))
        return client


class RedisCache(django_redis.RedisCache):
    def __init__(self, server, params):
        super().__init__(server, params)
        self._class = RedisCacheClient
