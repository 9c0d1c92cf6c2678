"""Helpers for the gateway and storage tests: fleet.json as the supervisor
writes it, JSON requests, and the trusted services as real processes.

No fixtures here (tests/conftest.py belongs to someone else)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from precinct.natsauth.identity import Identity
from precinct.plan.sandbox import SandboxPlan, plugin_account

# Generous: CI machines are slow, and nothing here asserts on timing.
DEADLINE = 30.0


def write_fleet(path: Path, plans: list[SandboxPlan], identity: Identity,
                folders: dict[str, Path] | None = None) -> Path:
    """fleet.json exactly as the supervisor's publish_fleet writes it."""
    fleet = {
        plan.id: {"folder": str((folders or {}).get(plan.id, path.parent / "no-folder" / plan.id)),
                  "plan": plan.to_dict(), "account_key": identity.account_key(plugin_account(plan.id))}
        for plan in plans
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(fleet, indent=1, sort_keys=True))
    tmp.replace(path)
    return path


async def ask(nc, subject: str, body: Any = None, *, raw: bytes | None = None, timeout: float = 10.0,
              headers: dict | None = None) -> dict:
    """A request whose answer is JSON."""
    data = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
    msg = await nc.request(subject, data, timeout=timeout, headers=headers)
    return json.loads(msg.data)


async def started_gateway(nats_env, tmp_path: Path, plans: list[SandboxPlan], report_interval: float):
    """Accounts for `plans`, a fleet file, and the gateway started as serve()
    runs it (one connection per plugin): (gateway, the platform client)."""
    import nats

    from precinct.services.fleetfile import FleetFile
    from precinct.services.gateway import Gateway

    await nats_env.sync(*plans)
    fleet = write_fleet(tmp_path / "fleet.json", plans, nats_env.identity)
    platform = await nats_env.platform()

    async def connect_link(name, error_cb, disconnected_cb):
        return await nats.connect(nats_env.server.url, user_credentials=str(nats_env.identity.platform_creds()),
                                  name=name, error_cb=error_cb, disconnected_cb=disconnected_cb)

    gw = Gateway(platform.nc, FleetFile(fleet), report_interval=report_interval, connect_link=connect_link,
                 server_log=nats_env.server.config.log_file, offset_file=tmp_path / "offset.json")
    await gw.start()
    return gw, platform


def code_of(reply: dict) -> str | None:
    err = reply.get("error")
    return err.get("code") if isinstance(err, dict) else None


async def wait_until(check, what: str, timeout: float = DEADLINE, interval: float = 0.05):
    """Poll an async or plain callable until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class ServiceProcess:
    """`python -m precinct.services.<name> ...` as a child process (platform creds)."""

    def __init__(self, module: str, args: list[str], log_path: Path) -> None:
        self.module, self.args, self.log_path = module, args, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", self.module, *self.args],
                                     stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
