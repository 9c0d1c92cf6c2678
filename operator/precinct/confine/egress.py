"""The egress proxy for plugins granted `http_requests` (single host).

Inside the plugin's network namespace, 127.0.0.1:3128 is a listener the
supervisor owns (relay.py explains how); the runner gets HTTP_PROXY and
HTTPS_PROXY pointing at it. The proxy speaks just enough HTTP:

  * `CONNECT host:port` (HTTPS and anything tunnelled), and
  * absolute-form requests (`GET http://host/path HTTP/1.1`) for plain HTTP.

It resolves the name itself (the plugin has no DNS), refuses the request if
ANY address the name resolves to is refused by `denied_reason`, and then
connects to exactly the address it checked, so a name that changes its answer
between check and use (DNS rebinding) gains nothing. Only ports 80 and 443
are allowed. Refusals are answered `403` with the reason in the body, and
each one is reported to `on_refused` (the supervisor counts it against the
plugin whose namespace this proxy serves).

`denied_reason` is a pure function that judges what an address means, not how
it is spelt: loopback, private, link-local (cloud metadata 169.254.169.254
included), CGNAT, multicast, documentation and every other special-purpose
range (explicit tables plus Python's `is_global`), and every IPv6 form that
embeds an IPv4 address (EMBEDDINGS: IPv4-mapped and the NAT64 well-known
prefix are judged by the address they carry; IPv4-compatible, SIIT,
local-use NAT64, 6to4 and Teredo are refused whatever they carry). The
resolver turns other spellings (`2130706433`, `0x7f.1`, `127.1`) into the
address they mean before the policy sees them.

It does not inspect what is sent to an allowed address (TLS stays end to
end), and it cannot stop a plugin from talking to a public service an
attacker controls: that is what `http_requests` grants.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable

from ..plan.sandbox import DENIED_DESTINATIONS
from .relay import ListenerServer, splice

log = logging.getLogger("precinct.confine.egress")

PROXY_PORT = 3128
ALLOWED_PORTS = (80, 443)
HEAD_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

# -- the address policy: pure, table-driven, by meaning rather than spelling -------------

_net = ipaddress.ip_network

# IPv4 ranges refused whatever Python's `is_global` says (IANA special-purpose
# registry), on top of the plan's list (which Kubernetes' NetworkPolicy uses too).
IPV4_REFUSED: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    *((_net(n), "a range plugins may never reach") for n in DENIED_DESTINATIONS if ":" not in n),
    (_net("192.0.0.0/24"), "IETF protocol assignments"),
    (_net("192.0.2.0/24"), "documentation (TEST-NET-1)"),
    (_net("192.88.99.0/24"), "the deprecated 6to4 relay anycast"),
    (_net("198.18.0.0/15"), "benchmarking"),
    (_net("198.51.100.0/24"), "documentation (TEST-NET-2)"),
    (_net("203.0.113.0/24"), "documentation (TEST-NET-3)"),
    (_net("255.255.255.255/32"), "limited broadcast"),
    (_net("240.0.0.0/4"), "reserved"),
)
IPV6_REFUSED: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    *((_net(n), "a range plugins may never reach") for n in DENIED_DESTINATIONS if ":" in n),
    (_net("::/128"), "the unspecified address"),
    (_net("100::/64"), "discard-only"),
    (_net("2001:db8::/32"), "documentation"),
    (_net("fec0::/10"), "deprecated site-local"),
)


def _low32(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)


def _sixtofour(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF)


def _teredo_client(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(~int(ip) & 0xFFFFFFFF)       # stored XOR-ed with all ones


@dataclass(frozen=True)
class Embedding:
    """An IPv6 form that carries an IPv4 address inside it."""
    prefix: ipaddress.IPv6Network
    name: str
    extract: Callable[[ipaddress.IPv6Address], ipaddress.IPv4Address]
    # True: connecting reaches the embedded IPv4 host (the kernel's mapped
    # addresses; NAT64 on IPv6-only hosts with DNS64), so it is allowed exactly
    # when that IPv4 address is. False: deprecated or local-only, refused
    # whatever it embeds (no public HTTP service needs it).
    follows_ipv4: bool


# The prefixes do not overlap (::/96 is 0:0:0:0:0:0::, mapped 0:0:0:0:0:ffff::,
# SIIT 0:0:0:0:ffff:0::), so the order does not matter.
EMBEDDINGS: tuple[Embedding, ...] = (
    Embedding(_net("::ffff:0:0/96"), "IPv4-mapped", _low32, True),
    Embedding(_net("::ffff:0:0:0/96"), "SIIT IPv4-translated", _low32, False),
    Embedding(_net("::/96"), "IPv4-compatible (deprecated)", _low32, False),
    Embedding(_net("64:ff9b::/96"), "NAT64 well-known prefix", _low32, True),
    Embedding(_net("64:ff9b:1::/48"), "local-use NAT64", _low32, False),
    Embedding(_net("2002::/16"), "6to4 (deprecated)", _sixtofour, False),
    Embedding(_net("2001::/32"), "Teredo (deprecated; client address XOR-ed)", _teredo_client, False),
)


def _ipv4_reason(ip: ipaddress.IPv4Address) -> str | None:
    for net, what in IPV4_REFUSED:
        if ip in net:
            return f"{ip} is in {net} ({what})"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


def denied_reason(address: str) -> str | None:
    """Why a plugin may not connect to `address` (an IP literal); None if it may.

    Pure: no I/O, no state. Decides by what the address means: every IPv6
    form embedding an IPv4 address (EMBEDDINGS) is judged by the address it
    embeds, or refused outright if it is deprecated or local-only."""
    try:
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv4Address):
        return _ipv4_reason(ip)
    for net, what in IPV6_REFUSED:
        if ip in net:
            return f"{ip} is in {net} ({what})"
    for form in EMBEDDINGS:
        if ip in form.prefix:
            inner = form.extract(ip)
            inner_reason = _ipv4_reason(inner)
            if inner_reason:
                return f"{ip} is {form.name} ({form.prefix}) for {inner_reason}"
            if not form.follows_ipv4:
                return f"{ip} is {form.name} ({form.prefix}), which plugins may never use (it embeds {inner})"
            return None
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


def parse_allow(spec: str) -> frozenset[tuple[str, int]]:
    """`ADDR:PORT[,ADDR:PORT...]` (IPv6 as `[ADDR]:PORT`) -> {(address, port)}; ValueError names the bad entry."""
    out = set()
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        host, port = _split_host_port(item, -1)
        try:
            address = str(ipaddress.ip_address(host))
        except ValueError:
            raise ValueError(f"{item!r}: not ADDRESS:PORT with an IP address") from None
        if not 0 < port < 65536:
            raise ValueError(f"{item!r}: needs a port (1-65535)")
        out.add((address, port))
    return frozenset(out)


class EgressProxy:
    """`allow` is a TEST-ONLY exception list of exact (address, port) pairs the
    policy and the port list do not apply to (a local stand-in for a public
    service). No manifest can set it: only whoever constructs the proxy (tests;
    the supervisor from its own environment, PRECINCT_EGRESS_TEST_ALLOW, and
    then status says so)."""

    def __init__(self, resolver: Resolver = system_resolver, allowed_ports: Iterable[int] = ALLOWED_PORTS,
                 check: Callable[[str], str | None] = denied_reason,
                 allow: Iterable[tuple[str, int]] = (),
                 on_refused: Callable[[str], object] | None = None) -> None:
        self.resolver = resolver
        self.on_refused = on_refused
        self.allowed_ports = tuple(allowed_ports)
        self.check = check
        self.allow = frozenset((str(ipaddress.ip_address(a)), int(p)) for a, p in allow)
        self.refused: list[str] = []          # the last few refusals, for status/debugging

    def server(self, name: str, listener: socket.socket) -> ListenerServer:
        return ListenerServer(name, listener, self.handle)

    async def _choose(self, host: str, port: int) -> str:
        with contextlib.suppress(ValueError):
            if (str(ipaddress.ip_address(host)), port) in self.allow:
                return host
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
