"""Per-client request rate (API_THROTTLE_RATE), read from the settings on every request.

DRF's SimpleRateThrottle copies DEFAULT_THROTTLE_RATES onto the class when it is imported, so
changing the setting later (an override in a test, a settings reload) would not be seen; the rate
is looked up in ``django.conf.settings`` instead.
"""

from collections.abc import Iterator, Mapping

from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle


class _RatesFromSettings(Mapping):
    def __getitem__(self, scope: str) -> str:
        if scope != ServiceClientRateThrottle.scope:
            raise KeyError(scope)
        return settings.API_THROTTLE_RATE

    def __iter__(self) -> Iterator[str]:
        return iter((ServiceClientRateThrottle.scope,))

    def __len__(self) -> int:
        return 1


class ServiceClientRateThrottle(SimpleRateThrottle):
    """Per-client request rate; callers without a valid key are limited per IP address.

    The address is REMOTE_ADDR, or with API_NUM_PROXIES trusted proxies in front the address they
    append to X-Forwarded-For — never a value the caller chooses.
    """

    scope = "service_client"
    THROTTLE_RATES = _RatesFromSettings()

    def get_cache_key(self, request, view):
        client = getattr(request.user, "client_id", None)
        ident = f"client:{client}" if client else f"ip:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}
