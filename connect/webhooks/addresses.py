"""Which webhook URLs are refused: the service's own host, loopback, private, link-local, metadata and
other non-public addresses, unless ``WEBHOOKS_ALLOW_PRIVATE`` is on."""

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings

# Cloud metadata endpoints reachable by name; their addresses (169.254.169.254, fd00:ec2::254) are
# link-local or private and refused as such.
METADATA_HOSTS = frozenset({"metadata", "metadata.google.internal", "metadata.goog", "instance-data"})


def webhook_url_problem(url: str) -> str | None:
    """Why ``url`` may not receive webhooks, or None. Resolves the host name (DNS)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "Not a valid URL."
    if parts.scheme not in ("http", "https"):
        return "Only http and https URLs can receive webhooks."
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        return "The URL has no host."
    if parts.username or parts.password:
        return "Credentials in the URL are not allowed; put them in the path or a query parameter."
    if settings.WEBHOOKS_ALLOW_PRIVATE:
        return None
    own_hosts = {name.lstrip(".").lower() for name in settings.ALLOWED_HOSTS if name != "*"}
    if host in own_hosts or host == "localhost" or host.endswith(".localhost"):
        return "The URL points at this service's own host."
    if host in METADATA_HOSTS:
        return "The URL points at a cloud metadata service."
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port or 443, proto=socket.IPPROTO_TCP)}
    except (socket.gaierror, UnicodeError):
        return f"The host {host!r} cannot be resolved."
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            return f"The URL resolves to a non-public address ({ip}): loopback, private, link-local or reserved."
    return None
