"""The ledger's idempotency namespaces that belong to no service client.

A transaction's ``(source, external_id)`` is unique. Service clients write under their own name;
the ledger's own writers use the names below. A client that could take one of them could take an
internal key first (``expiry:<hold id>``, a reward action's id) and block that internal write forever,
so these names are refused as client names (``create_service_client``, the admin).
"""

from django.conf import settings

STAFF_SOURCE = "staff"  # manual adjustments
SYSTEM_SOURCE = "system"  # periodic work: hold expiry, points expiry


def internal_sources() -> frozenset[str]:
    """Every source name the ledger writes under itself, Connect's in-process credits included."""
    return frozenset({STAFF_SOURCE, SYSTEM_SOURCE, settings.CONNECT_LEDGER_SOURCE})


def client_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a service client's name, or None.

    Compared without case and surrounding whitespace, so no look-alike of an internal name passes.
    """
    if not isinstance(name, str) or not 1 <= len(name) <= 100:
        return "A client name has 1 to 100 characters."
    if name != name.strip() or any(ord(char) < 32 or ord(char) == 127 for char in name):
        return "A client name may not contain control characters or begin or end with whitespace."
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "A client name may not contain surrogate characters."
    if name.casefold() in {source.casefold() for source in internal_sources()}:
        reserved = ", ".join(sorted(internal_sources()))
        return f"{name!r} is reserved for the ledger's own transactions ({reserved})."
    return None
