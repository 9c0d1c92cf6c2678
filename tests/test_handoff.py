"""NATS connections handed into the sandbox (confine/broker.py, confine/connect_fence.py,
precinct_runner/transport.py), part by part against real things: the eBPF
connect fence in a real cgroup, the monitor's broker over a real unix channel,
and a real runner reaching a real nats-server only through handed-in sockets,
across a server restart. tests/test_confinement.py proves the whole path in
the sandbox, attacks included."""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nats
import pytest

from precinct.confine import broker as broker_mod
from precinct.confine.broker import BURST, Broker
from precinct.confine.connect_fence import ConnectFence, FenceError, connect_program, unified_mount
from runner_support import FIXTURE_PLUGINS, NatsServer, Runner, request_json

from test_runner import runner_python  # noqa: F401 - the session's runner environment

EIGHTBALL = FIXTURE_PLUGINS / "8ball"
ASK = "rosey.command.eightball.ask"


def _listener(host: str, port: int = 0) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(8)
    return sock


def test_the_connect_program_checks_address_then_port():
    """Decoded: load user_ip4, compare with 127.0.0.1 as it sits in memory, load
    user_port, compare with the port in network order; allow (1) only if both match."""
    import struct

    program = connect_program("127.0.0.1", 4222)
    insns = [struct.unpack("<BBhi", program[i:i + 8]) for i in range(0, len(program), 8)]
    assert [op for op, *_ in insns] == [0x61, 0x55, 0x61, 0x55, 0xB7, 0x95, 0xB7, 0x95]
    assert insns[0][2] == 4 and insns[2][2] == 24                 # offsetof user_ip4, user_port
    as_in_memory = int.from_bytes(socket.inet_aton("127.0.0.1"), sys.byteorder)
    assert insns[1][3] & 0xFFFFFFFF == as_in_memory
    assert insns[3][3] & 0xFFFFFFFF == int.from_bytes((4222).to_bytes(2, "big") + b"\0\0", sys.byteorder)
    assert insns[4][3] == 1 and insns[6][3] == 0                  # allow on the match, refuse otherwise
    assert insns[1][2] == 4 and insns[3][2] == 2                  # both mismatches jump to the refusal
    with pytest.raises(OverflowError):
        connect_program("127.0.0.1", 70000)


@pytest.mark.skipif(os.geteuid() != 0, reason="attaching cgroup BPF programs needs root")
def test_a_socket_made_inside_the_fence_connects_to_its_one_address_only(tmp_path):
    if unified_mount() is None:
        pytest.skip("no cgroup v2 hierarchy mounted on this host: the supervisor relays instead")
    allowed = _listener("127.0.0.1")
    port = allowed.getsockname()[1]
    same_port = _listener("127.0.0.2", port)
    other = _listener("127.0.0.1")
    fence = ConnectFence.create(f"precinct-test-{os.getpid()}", "127.0.0.1", port)
    # A child joins the fence, makes a socket, leaves, and tries every target with it.
    code = f"""
import json, os, socket, sys
sys.path.insert(0, {str(Path(broker_mod.__file__).parents[2])!r})
from precinct.confine.broker import join_fence
join_fence({str(fence.procs)!r}, {fence.rel!r})
fenced = socket.socket()
open({str(tmp_path / 'back')!r}, 'w').write(open('/proc/self/cgroup').read())
out = {{}}
for name, target in (("allowed", ("127.0.0.1", {port})), ("same_port", ("127.0.0.2", {port})),
                     ("other", ("127.0.0.1", {other.getsockname()[1]}))):
    s = socket.socket(fileno=os.dup(fenced.fileno())) if name == "allowed" else socket.socket()
    try:
        s.settimeout(5); s.connect(target); out[name] = "ok"
    except OSError as exc:
        out[name] = exc.errno
try:
    socket.socket().bind(("127.0.0.1", 0)); out["bind"] = "ok"
except OSError as exc:
    out["bind"] = exc.errno
print(json.dumps(out))
"""
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert out == {"allowed": "ok", "same_port": errno.EPERM, "other": errno.EPERM, "bind": errno.EPERM}, out
        same_port.setblocking(False)
        with pytest.raises(BlockingIOError):
            same_port.accept()                               # nothing arrived
    finally:
        for s in (allowed, same_port, other):
            s.close()
        deadline = time.monotonic() + 30
        while fence.directory.exists() and time.monotonic() < deadline:
            fence.remove()                                   # empty once the child is gone
            time.sleep(0.05)
    assert not fence.directory.exists()


def test_the_fence_refuses_a_host_name():
    with pytest.raises(FenceError, match="IPv4 address"):
        ConnectFence.create("precinct-test", "localhost", 4222)


def _serve(b: Broker, stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.is_set():
            wait = b.wants_read()
            if wait:
                stop.wait(wait)
                continue
            ready, _, _ = select.select([b.channel], [], [], 0.2)
            if ready and not b.serve_one():
                return
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def test_the_broker_hands_out_a_burst_then_limits_and_counts(tmp_path):
    nats_stand_in = _listener("127.0.0.1")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    counts = tmp_path / "broker.json"
    b = Broker(ours, nats_stand_in.getsockname(), str(counts))
    stop = threading.Event()
    thread = _serve(b, stop)
    try:
        theirs.settimeout(30)
        answers = []
        for _ in range(BURST + 1):
            theirs.send(b"c")
            msg, fds, _flags, _addr = socket.recv_fds(theirs, 256, 4)
            answers.append(msg)
            for fd in fds:
                peer = socket.socket(fileno=fd)
                assert peer.getpeername() == nats_stand_in.getsockname()     # connected, to NATS
                peer.close()
        assert answers == [b"ok"] * BURST + [b"no: rate limited"], answers
        assert json.loads(counts.read_text()) == {"handed": BURST, "rate_limited": 1, "failed": 0}
        # A token comes back after REFILL seconds: the next request is served again.
        theirs.send(b"c")
        msg, fds, _f, _a = socket.recv_fds(theirs, 256, 4)
        assert msg == b"ok" and len(fds) == 1
        os.close(fds[0])
        nats_stand_in.close()                               # NATS gone: refused in words, counted
        time.sleep(broker_mod.REFILL)
        theirs.send(b"c")
        msg, fds, _f, _a = socket.recv_fds(theirs, 256, 4)
        assert msg.startswith(b"no: NATS unreachable") and not fds, msg
        assert json.loads(counts.read_text())["failed"] == 1
    finally:
        stop.set()
        theirs.close()
        thread.join(10)
        ours.close()


async def test_a_runner_reaches_nats_only_through_handed_sockets_and_survives_a_restart(runner_python,  # noqa: F811
                                                                                        tmp_path):
    server = NatsServer(tmp_path)
    server.start()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    counts = tmp_path / "broker.json"
    b = Broker(ours, ("127.0.0.1", server.port), str(counts))
    stop = threading.Event()
    thread = _serve(b, stop)
    # --server names a port nothing listens on: the runner must not dial it.
    runner = Runner(runner_python, EIGHTBALL, "eightball", "nats://127.0.0.1:9", tmp_path, instance="handed",
                    commands=[ASK], args=["--nats-fd", str(theirs.fileno())], pass_fds=(theirs.fileno(),))
    theirs.close()
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        await runner.wait_ready(nc)
        answer = await request_json(nc, ASK, {"user": "ann", "args": "handed?"})
        assert answer["success"] is True
        server.stop()
        server.start()
        await runner.wait_ready(nc, deadline=60)
        assert (await request_json(nc, ASK, {"user": "ann", "args": "again?"}))["success"] is True
        assert json.loads(counts.read_text())["handed"] >= 2, counts.read_text()
        assert runner.proc.poll() is None
    finally:
        await nc.close()
        runner.kill()
        stop.set()
        thread.join(10)
        ours.close()
        server.stop()
