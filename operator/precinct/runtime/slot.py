"""One plugin's life on a single host: start, watch, restart, stop.

A slot owns at most one running instance of a plugin. When the instance
exits on its own it is restarted with exponential backoff (Rosey's numbers:
1 s doubling to 60 s, reset after 300 s healthy); three quick crashes in a row
put it in CrashLoopBackOff. The slot remembers why it last exited
(`ExitCode<N>`) and the last lines of its output (stdout and stderr share
one pipe, read by plugin_log.py so that no output can blind the supervisor),
because that is what a person debugging a plugin needs first.

Nothing here trusts the plugin: readiness is a NATS ping answered through the
plugin's own account, and stopping escalates SIGTERM to SIGKILL of the whole
process group after the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
from dataclasses import dataclass, field, fields
from typing import Awaitable, Callable

from .. import conditions as cond
from ..conditions import Conditions
from ..confine.launch import Confinement, LaunchSpec, Process, die_with_parent
from .plugin_log import STATUS_LINES, PluginLog

STARTING, RUNNING, BACKOFF, CRASH_LOOP, STOPPED, REJECTED, SUSPENDED = (
    "Starting", "Running", "BackOff", "CrashLoopBackOff", "Stopped", "Rejected", "Suspended")


@dataclass
class RestartPolicy:
    initial_backoff: float = 1.0
    max_backoff: float = 60.0
    reset_after: float = 300.0      # healthy this long -> backoff starts over
    crash_loop_after: int = 3       # this many quick crashes in a row -> CrashLoopBackOff
    grace_period: float = 10.0      # SIGTERM -> SIGKILL
    ready_timeout: float = 30.0     # spawn -> first ping answer


@dataclass
class SlotStatus:
    id: str
    state: str = STOPPED
    pid: int | None = None
    uid: int | None = None
    instance: str | None = None
    restarts: int = 0
    last_exit: str | None = None
    last_exit_at: float | None = None
    stderr_tail: list[str] = field(default_factory=list)   # stdout and stderr, last lines, sanitised
    log_bytes: int = 0              # output read (stdout + stderr), all instances
    log_dropped_bytes: int = 0      # output discarded over the per-plugin cap (plugin_log.py)
    started_at: float | None = None
    ready_at: float | None = None
    cpu_seconds: float = 0.0
    memory_bytes: int = 0
    oom_kills: int = 0              # instances that ended OOMKilled (metrics, dashboard)
    enforcement: dict[str, str] = field(default_factory=dict)
    conditions: list[dict] = field(default_factory=list)


STATUS_FIELDS = tuple(f.name for f in fields(SlotStatus))


# (plugin id, instance) -> what to execute. The supervisor decides (sandbox, uid, ...).
Launcher = Callable[[str], Awaitable[LaunchSpec]]
# (plugin id, instance, deadline) -> True once the instance answers its ping.
Pinger = Callable[[str, float], Awaitable[bool]]


class _Release:
    """Releases a semaphore at most once (None: nothing to release)."""

    def __init__(self, semaphore: asyncio.Semaphore | None) -> None:
        self._semaphore = semaphore

    def __call__(self) -> None:
        if self._semaphore is not None:
            self._semaphore.release()
            self._semaphore = None


class Slot:
    def __init__(self, plugin_id: str, launcher: Launcher, pinger: Pinger, policy: RestartPolicy,
                 confinement: Confinement | None = None, starts: asyncio.Semaphore | None = None) -> None:
        self.id = plugin_id
        # Shared by every plugin slot: how many instances may be starting
        # (launch -> first health ping or exit) at once. Without it, hundreds
        # starting together on two cores miss their ready timeouts and start
        # again, and the fleet never settles.
        self.starts = starts
        self.launcher = launcher
        self.pinger = pinger
        self.policy = policy
        self.confinement = confinement or Confinement()
        self.status = SlotStatus(id=plugin_id)
        self.conditions = Conditions()
        self._proc: Process | None = None
        self._output = -1                # read end of the instance's stdout+stderr pipe
        self.log = PluginLog()
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._quick_crashes = 0
        self._launching = False
        self._backoff = policy.initial_backoff
        self.conditions.set(cond.READY, False, "Starting", "not started yet")

    # -- public ---------------------------------------------------------------

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name=f"slot:{self.id}")

    async def stop(self, reason: str = STOPPED) -> None:
        self._stopping.set()
        self._wake.set()
        if self._launching and self._task:
            # Still in the launcher (e.g. waiting for migrations): nothing runs yet,
            # and what it would start must not start after this stop.
            self._task.cancel()
        await self._terminate()
        if self._task:
            # gather: the slot's own cancellation is not an error here, but a
            # cancellation of whoever called stop() still reaches them.
            # (Its loop released the instance's sandbox on the way out.)
            await asyncio.gather(self._task, return_exceptions=True)
        self.status.state = reason
        self.conditions.set(cond.READY, False, reason, "stopped by the supervisor")

    def measure(self) -> None:
        """Read the live instance's CPU and memory (two cgroup reads when
        confined). The monitor does this once per sample for every plugin;
        snapshot() only reports the last numbers read, so a status request
        costs no file read per plugin."""
        proc = self._proc
        if proc and proc.returncode is None:
            stats = self.confinement.sample(self.id, proc.pid, self.status.instance)
            self.status.cpu_seconds, self.status.memory_bytes = stats.cpu_seconds, stats.memory_bytes

    def snapshot(self) -> SlotStatus:
        """The slot's state now, with CPU and memory as last measured."""
        self.status.stderr_tail = list(self.log.tail)[-STATUS_LINES:]
        self.status.log_bytes, self.status.log_dropped_bytes = self.log.kept_bytes, self.log.dropped_bytes
        self.status.enforcement = self.confinement.enforcement(self.id, self.status.instance)
        self.status.conditions = self.conditions.to_list()
        return self.status

    def snapshot_dict(self) -> dict:
        """snapshot() as a plain dict, as `dataclasses.asdict` would give but
        without its deep copy (most of a status request's time at hundreds of
        plugins): snapshot() makes a new list or dict for every field that
        holds one, so nothing here is shared with what the slot changes later."""
        status = self.snapshot()
        return {name: getattr(status, name) for name in STATUS_FIELDS}

    # -- the loop -------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping.is_set():
            instance = secrets.token_hex(3)
            if self.starts is not None:
                self.status.state = STARTING
                self._launching = True          # a stop() while waiting here cancels the wait
                try:
                    await self.starts.acquire()
                finally:
                    self._launching = False
            gate = _Release(self.starts)
            started = time.monotonic()
            try:
                spawned = await self._spawn(instance)
            except Exception as exc:  # a launch failure is a crash like any other
                gate()
                self.log.note(f"could not start: {exc}")
                self._record_exit(getattr(exc, "reason", None) or "LaunchFailed")
            else:
                if not spawned:
                    gate()
                    break
                await self._wait_ready_then_exit(instance, gate)
            finally:
                if self._stopping.is_set():
                    gate()
                # This instance is over (exited, never started, or stopped):
                # its sandbox goes, and only its own. During a hot reload
                # another slot's instance of the same plugin runs beside it.
                await self.confinement.release(self.id, instance)
            if self._stopping.is_set():
                break
            healthy_for = time.monotonic() - started
            if healthy_for >= self.policy.reset_after:
                self._backoff, self._quick_crashes = self.policy.initial_backoff, 0
            self._quick_crashes += 1
            self.status.restarts += 1
            crash_loop = self._quick_crashes >= self.policy.crash_loop_after
            self.status.state = CRASH_LOOP if crash_loop else BACKOFF
            reason = cond.CRASH_LOOP if crash_loop else (self.status.last_exit or "Exited")
            tail = self.log.tail[-1] if self.log.tail else ""
            self.conditions.set(cond.READY, False, reason,
                                f"{self.status.last_exit}; restarting in {self._backoff:g} s. {tail}".strip())
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._backoff)
            self._backoff = min(self._backoff * 2, self.policy.max_backoff)

    async def _spawn(self, instance: str) -> bool:
        """Start one instance; False if a stop came while the launcher ran."""
        self._launching = True
        try:
            spec = await self.confinement.wrap(self.id, await self.launcher(instance))
        finally:
            self._launching = False
        if self._stopping.is_set():
            return False
        self.status.state = STARTING
        self.status.instance = instance
        self.conditions.set(cond.READY, False, "Starting", f"instance {instance} starting")
        # stdout and stderr share one pipe; plugin_log.PluginLog reads it.
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            # The sandbox may fork it from a pre-imported template (confine/template.py).
            self._proc = await self.confinement.spawn(self.id, spec, write_end)
            if self._proc is None:
                self._proc = await asyncio.create_subprocess_exec(
                    *spec.argv, env=spec.env, cwd=spec.cwd,
                    stdin=asyncio.subprocess.DEVNULL, stdout=write_end, stderr=write_end,
                    start_new_session=True,  # its own process group: we can signal everything it started
                    preexec_fn=die_with_parent(os.getpid()),
                )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        self._output = read_end
        self.status.pid = self._proc.pid
        self.status.started_at = time.time()
        self.status.ready_at = None
        return True

    async def _wait_ready_then_exit(self, instance: str, started: Callable[[], None] = lambda: None) -> None:
        """Watch one instance; `started()` once it has answered or given up
        (frees its place among the instances starting at once)."""
        proc = self._proc
        assert proc is not None
        reader = asyncio.create_task(self.log.follow(self._output))
        exited = asyncio.create_task(proc.wait())
        ready = asyncio.create_task(self.pinger(instance, self.policy.ready_timeout))
        try:
            done, _ = await asyncio.wait({exited, ready}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            started()
        if ready in done and ready.result() and proc.returncode is None:
            self.status.state = RUNNING
            self.status.ready_at = time.time()
            self.conditions.set(cond.READY, True, "Running", f"instance {instance} answers its health ping")
        elif ready in done and proc.returncode is None:
            self.log.note(f"no answer to the health ping within {self.policy.ready_timeout:g} s")
            await self._terminate()
        else:
            ready.cancel()
        await exited
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader, 2)
        if not self._stopping.is_set():
            better = self.confinement.exit_reason(self.id, proc.returncode, instance)
            self._record_exit(better or cond.exit_reason(proc.returncode))
        self.status.pid = None

    def _record_exit(self, reason: str) -> None:
        self.status.last_exit = reason
        if reason == cond.OOM_KILLED:
            self.status.oom_kills += 1
        self.status.last_exit_at = time.time()

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.policy.grace_period)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        # Anything the plugin left behind in its group goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
