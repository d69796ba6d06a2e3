from rest_framework.throttling import SimpleRateThrottle


class ServiceClientRateThrottle(SimpleRateThrottle):
    """Per-client request rate (API_THROTTLE_RATE); anonymous callers are limited per IP."""

    scope = "service_client"

    def get_cache_key(self, request, view):
        client = getattr(request.user, "client_id", None)
        ident = f"client:{client}" if client else f"ip:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}
