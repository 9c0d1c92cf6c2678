"""The egress proxy end to end, with real connections only to addresses this
machine owns: loopback, and a network namespace this test creates
(tests/netns_support.py: 10.213.<n>.2 and every IPv6 form embedding it,
routed from the host to a veth pair, an HTTP server inside).

Each refused target is first shown reachable from here without the proxy (the
supervisor's network namespace is this one), so a `403` and an empty server
log are the proxy's doing. The plugin-side proofs (a sandboxed plugin asking
the proxy) are in test_confinement.py and tests/attacks/.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from netns_support import OwnedNetwork, can_own_networks
from precinct.confine.egress import EgressProxy


async def _through(proxy: EgressProxy, raw: bytes) -> bytes:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    front = proxy.server("test", listener)
    await front.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        return data
    finally:
        front.close()


def _get(url: str) -> bytes:
    host = url.split("/")[2]
    return f"GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


@pytest.fixture(scope="module")
def owned(tmp_path_factory):
    why = can_own_networks()
    if why:
        pytest.skip(f"end-to-end egress tests {why}")
    with OwnedNetwork(tmp_path_factory.mktemp("owned")) as net:
        yield net


def test_every_form_of_an_owned_private_address_is_refused_on_the_wire(owned):
    reached = owned.reachable_from_host()
    assert set(reached.values()) == {"ok"}, reached            # positive control: all of them route here
    before = len(owned.hits())
    proxy = EgressProxy()                                       # the system resolver, ports 80/443: as in production
    for form, url in owned.urls().items():
        answer = asyncio.run(_through(proxy, _get(url)))
        assert answer.startswith(b"HTTP/1.1 403"), (form, answer)
        assert owned.v4.encode() in answer, (form, answer)      # the reason names the embedded IPv4 address
        host = url.split("/")[2]
        tunnel = asyncio.run(_through(proxy, f"CONNECT {host}:80 HTTP/1.1\r\n\r\n".encode()))
        assert tunnel.startswith(b"HTTP/1.1 403"), (form, tunnel)
    assert len(owned.hits()) == before, owned.hits()[before:]
    assert len(proxy.refused) == 2 * len(owned.urls())


def test_the_test_allow_list_admits_exactly_one_address_and_port(owned):
    before = len(owned.hits())
    proxy = EgressProxy(allow={(owned.v4, 80)})
    ok = asyncio.run(_through(proxy, _get(f"http://{owned.v4}/allowed")))
    assert ok.split(b"\r\n")[0].endswith(b" 200 OK") and ok.endswith(b"owned network\n"), ok
    nat64 = asyncio.run(_through(proxy, _get(f"http://[{owned.v6['NAT64']}]/other-spelling")))
    assert nat64.startswith(b"HTTP/1.1 403"), nat64
    other_port = asyncio.run(_through(proxy, _get(f"http://{owned.v4}:81/")))
    assert other_port.startswith(b"HTTP/1.1 403"), other_port
    assert [h.split()[-1] for h in owned.hits()[before:]] == ["/allowed"]


def test_loopback_in_every_spelling_is_refused_on_the_wire():
    hits: list[bytes] = []
    server = socket.socket(socket.AF_INET6)
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    server.bind(("::", 0))
    server.listen(16)
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            hits.append(conn.recv(1000))
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        spellings = ["127.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "2130706433", "0x7f.1", "127.1",
                     "localhost"]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:   # positive control
            s.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200")
        proxy = EgressProxy(allowed_ports=(port,))
        for host in spellings:
            answer = asyncio.run(_through(proxy, _get(f"http://{host}:{port}/")))
            assert answer.startswith(b"HTTP/1.1 403"), (host, answer)
        assert len(hits) == 1, hits
    finally:
        stop.set()
        thread.join(5)
        server.close()
