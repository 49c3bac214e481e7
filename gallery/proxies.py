"""The visitor's address when the gallery runs behind proxies (``gallery.trusted_proxies``).

A proxy appends the address it was connected from to ``X-Forwarded-For``; whatever the visitor sent in that
header comes before it. So the header is believed only when the direct peer is a trusted proxy, and then read
from right to left past every trusted hop: the first address that is not a trusted proxy is the client (as
uvicorn's ProxyHeadersMiddleware and Werkzeug's ProxyFix do). A header from anyone else is ignored: it can
neither move a visitor's rate limit onto another address nor dodge it.

Rate limits key IPv6 clients by their /64 (one subscriber's usual allocation), IPv4 clients by their address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: list[Network] = [ipaddress.ip_network(entry, strict=False) for entry in networks]

    def trusts(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.strip())
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def client(self, peer: str, forwarded_for: Iterable[str]) -> str:
        """The client's address: ``peer`` unless it is trusted, else the rightmost untrusted forwarded hop (the
        leftmost one when every hop is a trusted proxy)."""
        if not self.networks or not self.trusts(peer):
            return peer
        hops = [hop.strip() for header in forwarded_for for hop in header.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self.trusts(hop):
                return hop
        return hops[0] if hops else peer


def limit_key(host: str) -> str:
    """What a rate limit counts a client by: an IPv6 address's /64, any other address as it is."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class ClientAddress:
    """ASGI middleware: ``scope["client"]`` becomes the visitor's address as :class:`TrustedProxies` reads it."""

    def __init__(self, app: ASGIApp, *, proxies: TrustedProxies) -> None:
        self.app = app
        self.proxies = proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        peer = scope.get("client")
        if scope["type"] in ("http", "websocket") and peer and self.proxies.networks:
            forwarded = [value.decode("latin-1") for name, value in scope["headers"] if name == b"x-forwarded-for"]
            host = self.proxies.client(str(peer[0]), forwarded)
            if host != peer[0]:
                scope["client"] = (host, 0)  # in place, as uvicorn's own proxy middleware does
        await self.app(scope, receive, send)
