"""kombu's Redis transport with one synchronous ``redis.Redis`` client per channel instead of one per use.

kombu's Redis channel builds a new client for every synchronous use: each publish batch (the web
process ringing doorbells) and, in a worker, each task's unacked-message bookkeeping and ack. As
for Django's cache (``config.cache``), redis-py's constructor copies its table of response callbacks
every time. A client holds no per-command state (each command takes a connection from the pool, and
a pipeline is an object of its own), so one per channel and pool does the same work. The client is
rebuilt when the channel's pool is replaced (kombu drops its pools when a channel closes).

The asynchronous client (a worker's BRPOP through the event loop) is kombu's, unchanged. Selected by
``CELERY_BROKER_TRANSPORT`` for ``redis://`` and ``rediss://`` broker URLs (config/settings.py).
"""

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _sync_client = None

    def _create_client(self, asynchronous=False):
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel


def transport_for(broker_url: str) -> str | None:
    """The transport to set as ``broker_transport`` for ``broker_url``: this one for Redis, else kombu's choice."""
    if broker_url.split("://", 1)[0] in ("redis", "rediss"):
        return f"{__name__}:Transport"
    return None
