"""X-Forwarded-For / X-Forwarded-Proto, believed only from configured proxies (`dashboard.trusted_proxies`).

Anyone can send these headers; taken at face value they would let a client pick the address the login
limits count against, or claim https. By default no proxy is trusted and the headers are ignored.
Behind a trusted proxy the client is the right-most address in X-Forwarded-For that is not itself a
trusted proxy, and the scheme is the proxy's X-Forwarded-Proto (so `Secure` cookies follow TLS).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip()]


def is_trusted(host: str | None, networks: list[Network]) -> bool:
    if not host or not networks:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in net for net in networks)


def forwarded_client(header: str, networks: list[Network]) -> str | None:
    """The right-most X-Forwarded-For entry that is a valid address and not a trusted proxy."""
    hops = [hop.strip() for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return None  # a garbled chain: fall back to the proxy's own address
        if not is_trusted(hop, networks):
            return hop
    return hops[0] if hops else None


class TrustedProxyMiddleware:
    """Rewrite the ASGI client and scheme from forwarding headers, only when a trusted proxy sent them."""

    def __init__(self, app: ASGIApp, trusted: Iterable[str] = ()) -> None:
        self.app = app
        self.networks = parse_networks(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self.networks:
            client = scope.get("client")
            if client and is_trusted(client[0], self.networks):
                raw = scope.get("headers") or []
                xff = ",".join(v.decode("latin-1") for k, v in raw if k.lower() == b"x-forwarded-for")
                host = forwarded_client(xff, self.networks) if xff else None
                if host:
                    scope["client"] = (host, 0)
                protos = [v.decode("latin-1") for k, v in raw if k.lower() == b"x-forwarded-proto"]
                proto = ",".join(protos).split(",")[-1].strip().lower()
                if proto in ("http", "https"):
                    scope["scheme"] = proto if scope["type"] == "http" else ("wss" if proto == "https" else "ws")
        await self.app(scope, receive, send)
