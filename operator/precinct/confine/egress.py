"""The egress proxy for plugins granted `http_requests` (single host).

Inside the plugin's network namespace, 127.0.0.1:3128 is a listener the
supervisor owns (relay.py explains how); the runner gets HTTP_PROXY and
HTTPS_PROXY pointing at it. The proxy speaks just enough HTTP:

  * `CONNECT host:port` (HTTPS and anything tunnelled), and
  * absolute-form requests (`GET http://host/path HTTP/1.1`) for plain HTTP.

It resolves the name itself (the plugin has no DNS), refuses the request if
ANY address the name resolves to is loopback, private, link-local (cloud
metadata 169.254.169.254 included), CGNAT, multicast or otherwise not
globally routable (plan.sandbox.DENIED_DESTINATIONS plus Python's
`is_global`), and then connects to exactly the address it checked, so a name
that changes its answer between check and use (DNS rebinding) gains nothing.
Only ports 80 and 443 are allowed. Refusals are answered `403` with the
reason in the body, and each one is reported to `on_refused` (the supervisor
counts it against the plugin whose namespace this proxy serves).

It does not inspect what is sent to an allowed address (TLS stays end to
end), and it cannot stop a plugin from talking to a public service an
attacker controls: that is what `http_requests` grants.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Awaitable, Callable, Iterable

from ..plan.sandbox import DENIED_DESTINATIONS
from .relay import ListenerServer, splice

log = logging.getLogger("precinct.confine.egress")

PROXY_PORT = 3128
ALLOWED_PORTS = (80, 443)
HEAD_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0

_DENIED = [ipaddress.ip_network(n) for n in (*DENIED_DESTINATIONS, "64:ff9b::/96", "2002::/16", "::/128")]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]


def denied_reason(address: str) -> str | None:
    """Why a plugin may not connect to `address`; None if it may."""
    try:
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for net in _DENIED:
        if ip.version == net.version and ip in net:
            return f"{ip} is in {net}, which plugins may never reach"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def _split_host_port(authority: str, default_port: int) -> tuple[str, int]:
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
        return host, port
    if authority.count(":") == 1:
        host, port = authority.split(":")
        return host, int(port)
    return authority, default_port


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _answer(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    phrase = {400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed", 502: "Bad Gateway"}.get(status, "Error")
    body = f"precinct egress proxy: {reason}\n".encode()
    writer.write(f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                 f"Connection: close\r\n\r\n".encode() + body)


class EgressProxy:
    def __init__(self, resolver: Resolver = system_resolver, allowed_ports: Iterable[int] = ALLOWED_PORTS,
                 check: Callable[[str], str | None] = denied_reason,
                 on_refused: Callable[[str], object] | None = None) -> None:
        self.resolver = resolver
        self.on_refused = on_refused
        self.allowed_ports = tuple(allowed_ports)
        self.check = check
        self.refused: list[str] = []          # the last few refusals, for status/debugging

    def server(self, name: str, listener: socket.socket) -> ListenerServer:
        return ListenerServer(name, listener, self.handle)

    async def _choose(self, host: str, port: int) -> str:
        if port not in self.allowed_ports:
            raise Refused(403, f"port {port} is not allowed (only {', '.join(map(str, self.allowed_ports))})")
        try:
            addresses = await self.resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise Refused(502, f"cannot resolve {host}: {exc}") from None
        if not addresses:
            raise Refused(502, f"{host} has no address")
        for address in addresses:
            reason = self.check(address)
            if reason:
                raise Refused(403, f"{host} resolves to {reason}")
        return addresses[0]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
            return
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ")
        except ValueError:
            _answer(writer, 400, "malformed request line")
            return
        try:
            if method.upper() == "CONNECT":
                host, port = _split_host_port(target, 443)
                address = await self._choose(host, port)
                upstream = await self._connect(address, port)
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
            else:
                if not target.lower().startswith("http://"):
                    raise Refused(400, "only absolute http:// URLs and CONNECT are proxied")
                rest = target[7:]
                authority, slash, path = rest.partition("/")
                host, port = _split_host_port(authority, 80)
                address = await self._choose(host, port)
                upstream = await self._connect(address, port)
                kept = [line for line in lines[1:] if line and not line.lower().startswith(("proxy-", "connection:"))]
                request = [f"{method} /{path if slash else ''} {version}", *kept, "Connection: close", "", ""]
                upstream[1].write("\r\n".join(request).encode("latin-1"))
        except Refused as exc:
            self.refused = (self.refused + [str(exc)])[-20:]
            log.info("egress refused: %s", exc)
            if exc.status == 403 and self.on_refused is not None:
                self.on_refused(str(exc))
            _answer(writer, exc.status, str(exc))
            return
        except ValueError:
            _answer(writer, 400, "malformed target")
            return
        await splice((reader, writer), upstream)

    async def _connect(self, address: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.wait_for(asyncio.open_connection(address, port), CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            raise Refused(502, f"cannot connect to {address}:{port}: {exc or type(exc).__name__}") from None
