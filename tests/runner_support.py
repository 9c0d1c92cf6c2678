"""Helpers for the runner tests: a real nats-server and real runner processes.

No fixtures here (tests/conftest.py belongs to someone else); test_runner.py
wraps these in its own fixtures.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE_PLUGINS = REPO / "tests" / "fixtures" / "plugins"
EXAMPLE_PLUGINS = REPO / "plugins"
NATS_SERVER = Path(sys.executable).parent / "nats-server"

# Generous: CI machines are slow, and nothing here asserts on timing.
READY_DEADLINE = 45.0
EXIT_DEADLINE = 45.0
REQUEST_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class NatsServer:
    """A plain, unauthenticated nats-server on a loopback port; restartable
    on the same port."""

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert NATS_SERVER.exists(), f"nats-server not found at {NATS_SERVER}"
        self.starts += 1
        log = open(self.log_dir / f"nats-{self.port}-{self.starts}.log", "wb")
        self.proc = subprocess.Popen([str(NATS_SERVER), "-a", "127.0.0.1", "-p", str(self.port)],
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while not _port_open(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not listen on {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Runner:
    """One `python -m precinct_runner` subprocess, stderr captured to a file."""

    def __init__(self, python: Path, plugin_dir: Path, plugin_id: str, server: str, log_dir: Path, *,
                 instance: str | None = "i1", commands: list[str] | tuple[str, ...] = (),
                 args: list[str] | tuple[str, ...] = (), env: dict[str, str] | None = None,
                 use_cli: bool = True, pass_fds: tuple[int, ...] = ()) -> None:
        self.plugin_id = plugin_id
        self.instance = instance
        argv = [str(python), "-m", "precinct_runner"]
        if use_cli:
            argv += ["--plugin-dir", str(plugin_dir), "--plugin-id", plugin_id, "--server", server]
            if instance is not None:
                argv += ["--instance", instance]
            for subject in commands:
                argv += ["--command", subject]
        argv += list(args)
        full_env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        full_env.update(env or {})
        self.stderr_path = log_dir / f"runner-{plugin_id}-{instance or 'env'}-{time.monotonic_ns()}.stderr"
        with open(self.stderr_path, "wb") as err:
            # cwd = the plugin folder, as the supervisor does
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                                         cwd=str(plugin_dir), env=full_env, pass_fds=pass_fds)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def ping_subject(self) -> str:
        return f"precinct.ping.{self.plugin_id}.{self.instance}"

    def output(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait(self, timeout: float = EXIT_DEADLINE) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"runner did not exit within {timeout} s; output:\n{self.output()}") from None

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    async def wait_ready(self, nc, deadline: float = READY_DEADLINE) -> dict:
        """Poll the health ping until it is answered; fail with the runner's
        output if it exits or never answers."""
        end = time.monotonic() + deadline
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"runner exited with {self.proc.returncode} before it was ready; "
                                     f"output:\n{self.output()}")
            try:
                reply = await nc.request(self.ping_subject, b"{}", timeout=0.5)
                return json.loads(reply.data)
            except Exception:
                if time.monotonic() > end:
                    raise AssertionError(
                        f"runner never answered {self.ping_subject}; output:\n{self.output()}") from None
                await asyncio.sleep(0.1)

    async def wait_exit(self, deadline: float = EXIT_DEADLINE) -> int:
        end = time.monotonic() + deadline
        while self.proc.poll() is None:
            if time.monotonic() > end:
                raise AssertionError(f"runner did not exit within {deadline} s; output:\n{self.output()}")
            await asyncio.sleep(0.05)
        return self.proc.returncode


async def request_json(nc, subject: str, payload: dict, timeout: float = REQUEST_TIMEOUT) -> dict:
    reply = await nc.request(subject, json.dumps(payload).encode(), timeout=timeout)
    return json.loads(reply.data)


async def next_message(queue: asyncio.Queue, what: str, timeout: float = REQUEST_TIMEOUT):
    try:
        return await asyncio.wait_for(queue.get(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"no {what} within {timeout} s") from None


__all__ = ["REPO", "FIXTURE_PLUGINS", "EXAMPLE_PLUGINS", "NATS_SERVER", "NatsServer", "Runner", "free_port",
           "request_json", "next_message", "READY_DEADLINE"]
