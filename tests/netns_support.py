"""Addresses this machine owns, for end-to-end egress tests (needs root).

`OwnedNetwork` creates a network namespace joined to the host by a veth pair
carrying 10.213.<n>.0/30 (a private range nothing else here uses; <n> is
picked free), with a tiny HTTP server inside that records every request. Every
IPv6 form that embeds its IPv4 address (IPv4-compatible, SIIT, NAT64 both
prefixes, 6to4, Teredo) is assigned inside the namespace too and routed from
the host to the veth, so each of those addresses belongs to this machine and a
connection to it can never leave it. `reachable_from_host()` is the positive
control: the supervisor's network namespace (the host's) can reach every one,
so when the egress proxy refuses them, the refusal is the proxy's.

IPv4-mapped addresses (`::ffff:10.213.n.2`) are not assigned anywhere: the
kernel turns a connection to one into IPv4, so they reach the same server.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SERVER = r"""
import http.server, socket, sys
log = open(sys.argv[1], "a", buffering=1)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        log.write(f"{self.client_address[0]} {self.headers.get('Host')} {self.path}\n")
        body = b"owned network\n"
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
S(("::", 80), H).serve_forever()
"""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def embedded_forms(v4: str) -> dict[str, str]:
    """Every IPv6 spelling of `v4` the egress policy knows, by form name."""
    n = int(ipaddress.IPv4Address(v4))
    teredo = (0x20010000 << 96) | (n << 64) | (0x7FFF << 32) | (~n & 0xFFFFFFFF)   # server and client = v4
    return {
        "IPv4-compatible": str(ipaddress.IPv6Address(n)),
        "SIIT": str(ipaddress.IPv6Address((0xFFFF << 48) | n)),
        "NAT64": str(ipaddress.IPv6Address((0x0064FF9B << 96) | n)),
        "local NAT64": str(ipaddress.IPv6Address((0x0064FF9B0001 << 80) | n)),
        "6to4": str(ipaddress.IPv6Address((0x2002 << 112) | (n << 80) | 1)),
        "Teredo": str(ipaddress.IPv6Address(teredo)),
    }


class OwnedNetwork:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        tag = secrets.token_hex(3)
        self.ns, self.host_if, self.ns_if = f"ptest-{tag}", f"pt{tag}h", f"pt{tag}n"
        self.log = tmp / f"owned-{tag}.log"
        self.server: subprocess.Popen | None = None
        taken = _ip("-4", "route", "show").stdout + _ip("-4", "addr", "show").stdout
        free = [n for n in range(1, 255) if f"10.213.{n}." not in taken]
        self.n = free[secrets.randbelow(len(free))]
        self.host_v4, self.v4 = f"10.213.{self.n}.1", f"10.213.{self.n}.2"
        self.host_v6, self.ns_v6 = f"fd13:213:{self.n:x}::1", f"fd13:213:{self.n:x}::2"
        self.v6 = embedded_forms(self.v4)

    @property
    def mapped(self) -> str:
        return f"::ffff:{self.v4}"

    def urls(self) -> dict[str, str]:
        """Form name -> a URL on port 80 that lands on the server inside."""
        out = {"IPv4": f"http://{self.v4}/", "IPv4-mapped": f"http://[{self.mapped}]/"}
        out.update({name: f"http://[{addr}]/" for name, addr in self.v6.items()})
        return out

    def __enter__(self) -> "OwnedNetwork":
        try:
            self._up()
        except BaseException:
            self.close()
            raise
        return self

    def _up(self) -> None:
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if, "netns", self.ns)
        _ip("addr", "add", f"{self.host_v4}/30", "dev", self.host_if)
        _ip("-6", "addr", "add", f"{self.host_v6}/64", "dev", self.host_if, "nodad")
        _ip("link", "set", self.host_if, "up")
        _ip("-n", self.ns, "link", "set", "lo", "up")
        _ip("-n", self.ns, "addr", "add", f"{self.v4}/30", "dev", self.ns_if)
        _ip("-n", self.ns, "-6", "addr", "add", f"{self.ns_v6}/64", "dev", self.ns_if, "nodad")
        for addr in self.v6.values():
            _ip("-n", self.ns, "-6", "addr", "add", f"{addr}/128", "dev", self.ns_if, "nodad")
            _ip("-6", "route", "add", f"{addr}/128", "via", self.ns_v6, "dev", self.host_if, "src", self.host_v6)
        _ip("-n", self.ns, "link", "set", self.ns_if, "up")
        _ip("-n", self.ns, "route", "add", "default", "via", self.host_v4)
        _ip("-n", self.ns, "-6", "route", "add", "default", "via", self.host_v6)
        self.server = subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, "-I", "-c", SERVER,
                                        str(self.log)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection((self.v4, 80), timeout=1):
                break
            if time.monotonic() > deadline or self.server.poll() is not None:
                raise RuntimeError("the HTTP server in the owned namespace did not start")
            time.sleep(0.1)

    def hits(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def reachable_from_host(self) -> dict[str, str]:
        """Form name -> "ok" or the error, fetching each URL directly (no proxy)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        out = {}
        for name, url in self.urls().items():
            try:
                with opener.open(url, timeout=10) as resp:
                    out[name] = "ok" if resp.read() == b"owned network\n" else "wrong body"
            except OSError as exc:
                out[name] = str(exc)
        return out

    def close(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.kill()
            self.server.wait(10)
        _ip("netns", "del", self.ns, check=False)          # takes the veth pair and the routes with it
        _ip("link", "del", self.host_if, check=False)

    def __exit__(self, *exc: object) -> None:
        self.close()


def can_own_networks() -> str | None:
    """Why OwnedNetwork cannot work here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs)"
    if subprocess.run(["ip", "-V"], capture_output=True).returncode != 0:
        return "needs the `ip` command (iproute2)"
    return None


class LoopbackHTTP:
    """A tiny HTTP server on 127.0.0.1 that records request paths: a local
    stand-in for a public service (the egress proxy lets plugins reach it only
    through PRECINCT_EGRESS_TEST_ALLOW)."""

    def __init__(self) -> None:
        import http.server

        self.paths: list[str] = []
        paths = self.paths

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                paths.append(self.path)
                body = b"stand-in\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        import threading

        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class UnixListener:
    """A world-writable pathname unix socket that counts connections (what a
    careless host service leaves in /tmp or /run)."""

    def __init__(self, path: str) -> None:
        import threading

        self.path, self.accepted = path, 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, 0o777)
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self._stop = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
