"""Service-client authentication (``Authorization: Api-Key <key>``) and scope checks (SPEC §3)."""

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission

from .models import ServiceClientKey

KEYWORD = "Api-Key"


class ServicePrincipal:
    """The authenticated caller: a service client and what its scopes allow."""

    is_authenticated = True
    is_anonymous = False
    is_staff = False

    def __init__(self, client):
        self.client = client
        self.client_id = client.pk
        self.client_name = client.name
        self.scopes = frozenset(client.scopes or ())

    def __str__(self) -> str:
        return self.client_name

    def has_scope(self, scope: str) -> bool:
        """True for the scope itself, and for ``events:write`` when a prefix-limited form is held.

        Only ``events:write`` has prefix-limited forms: a stray ``points:debit:x`` grants nothing.
        """
        if scope in self.scopes:
            return True
        if scope != "events:write":
            return False
        return any(granted.startswith("events:write:") for granted in self.scopes)

    def may_write_event_type(self, event_type: str) -> bool:
        if "events:write" in self.scopes:
            return True
        prefixes = [s[len("events:write:") :] for s in self.scopes if s.startswith("events:write:")]
        return any(event_type.startswith(prefix) for prefix in prefixes)


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        keyword, _, key = header.strip().partition(" ")
        key = key.strip()
        if keyword.lower() != KEYWORD.lower() or not key or " " in key:
            raise exceptions.AuthenticationFailed("Use the header 'Authorization: Api-Key <key>'.")
        try:
            api_key = ServiceClientKey.objects.get_from_key(key)  # usable keys only, its client loaded
        except ServiceClientKey.DoesNotExist:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.") from None
        if api_key.has_expired:
            raise exceptions.AuthenticationFailed("The API key has expired.")
        return ServicePrincipal(api_key.client), api_key

    def authenticate_header(self, request):
        return KEYWORD


class HasScope(BasePermission):
    """Requires the scope named by the view's ``required_scope`` (a tuple: any one of them; None: only a valid key)."""

    message = "This API key lacks the scope this operation needs."

    def has_permission(self, request, view):
        principal = request.user
        if not isinstance(principal, ServicePrincipal):
            return False
        scope = getattr(view, "required_scope", None)
        if scope is None:
            return True
        if isinstance(scope, tuple):
            if any(principal.has_scope(each) for each in scope):
                return True
            self.message = "This API key lacks each of the scopes " + ", ".join(f"'{each}'" for each in scope) + "."
            return False
        if principal.has_scope(scope):
            return True
        self.message = f"This API key lacks the scope '{scope}'."
        return False
