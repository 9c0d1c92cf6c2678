"""The plugin's connections to NATS, handed in instead of relayed.

Design (docs/confinement.md, "Network"): the plugin's network namespace holds
only loopback. When the runner needs a connection to NATS it writes one byte
on an AF_UNIX SOCK_SEQPACKET channel (fd 3 in the sandbox); the instance's
trusted monitor (init.py, root, host network namespace, *not* the supervisor)
opens a TCP connection to the NATS server and passes the connected socket
back with SCM_RIGHTS. nats-server then reads and writes the plugin's socket
directly: nothing copies plugin traffic.

A socket keeps the network namespace it was made in, so the plugin now holds
a socket of the host's namespace. `connect(AF_UNSPEC)` disconnects it and it
can be connected, bound or made to listen again. What stops that from
reopening the host network, layer by layer:

  * the connect fence (connect_fence.py): the monitor makes every socket
    from inside a cgroup whose eBPF programs let a connect() through only to
    the NATS server's address and port, and refuse every bind(), for the
    socket's whole life, whoever calls;
  * seccomp refuses listen() (an autobound listener would be a server in the
    host's namespace) and sends with MSG_FASTOPEN;
  * Landlock (ABI >= 4) allows one TCP port and no bind, a second lock on
    the same door; the egress proxy inside the namespace listens on that
    same port, so nothing else needs to be allowed;
  * socket options that could re-route it (SO_BINDTODEVICE, SO_MARK,
    IP_TRANSPARENT, TCP_REPAIR) need capabilities the plugin does not have.

Without the fence or seccomp (a v1-only host, no cgroup BPF, a layer
switched off) the supervisor relays NATS traffic instead (relay.py) and
status says `netns+relay` with the reason.

The monitor answers at most BURST requests at once and one per REFILL
seconds after that; a refused request stops it reading the channel until the
next token, so a flood costs it one read per token. Live connections are
also capped by the plugin's NATS account (natsauth/accounts.py).

Standard library only: init.py imports this in every monitor.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time

BURST = 4
REFILL = 1.0                    # seconds per token after the burst
CONNECT_TIMEOUT = 5.0


class BrokerError(RuntimeError):
    pass


def join_fence(procs: str, rel: str) -> None:
    """Move this process into the connect fence's cgroup and check it is there:
    every socket made after this is fenced (connect_fence.py)."""
    with open(procs, "w") as fh:
        fh.write("0")
    with open("/proc/self/cgroup") as fh:
        shown = next((line.rstrip("\n")[3:] for line in fh if line.startswith("0::")), None)
    if shown != rel:
        raise BrokerError(f"not in the connect fence's cgroup ({shown!r}, expected {rel!r})")


def open_nats_socket(host: str, port: int) -> socket.socket:
    """A TCP connection to NATS, made here so it is fenced, ready to hand in."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# -- the monitor's side of the channel -----------------------------------------------


class Broker:
    """Serves one instance's channel: a request byte in, a connected socket out."""

    def __init__(self, channel: socket.socket, nats: tuple[str, int], counters: str | None) -> None:
        self.channel = channel
        self.nats = nats
        self.counters_path = counters
        self.tokens = float(BURST)
        self.stamp = time.monotonic()
        self.paused_until = 0.0
        self.counts = {"handed": 0, "rate_limited": 0, "failed": 0}
        self._write_counts()

    def _refill(self, now: float) -> None:
        self.tokens = min(BURST, self.tokens + (now - self.stamp) / REFILL)
        self.stamp = now

    def wants_read(self) -> float | None:
        """0: read the channel now; else seconds until it may be read again."""
        return max(0.0, self.paused_until - time.monotonic())

    def serve_one(self) -> bool:
        """Answer one request. False once the runner's end is closed."""
        try:
            request = self.channel.recv(16)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not request:
            return False
        now = time.monotonic()
        self._refill(now)
        # Counted before the answer leaves, so whoever got the answer reads the new count.
        if self.tokens < 1:
            self.paused_until = now + (1 - self.tokens) * REFILL
            self._count("rate_limited")
            self._reply(b"no: rate limited")
            return True
        self.tokens -= 1
        try:
            sock = open_nats_socket(*self.nats)
        except OSError as exc:
            self._count("failed")
            self._reply(f"no: NATS unreachable: {exc.strerror or exc}".encode())
            return True
        with sock:
            self._count("handed")
            self._reply(b"ok", sock.fileno())
        return True

    def _count(self, what: str) -> None:
        self.counts[what] += 1
        self._write_counts()

    def _reply(self, text: bytes, fd: int | None = None) -> None:
        with contextlib.suppress(OSError):
            if fd is None:
                self.channel.send(text)
            else:
                socket.send_fds(self.channel, [text], [fd])

    def _write_counts(self) -> None:
        if not self.counters_path:
            return
        tmp = f"{self.counters_path}.tmp"
        with contextlib.suppress(OSError):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(self.counts, fh)
            os.replace(tmp, self.counters_path)


def read_counts(path: str | os.PathLike) -> dict[str, int] | None:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return {k: int(v) for k, v in data.items() if isinstance(v, int)}
