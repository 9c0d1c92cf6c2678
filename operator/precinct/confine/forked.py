"""The supervisor's side of a template process (confine/template.py): start
it, ask it to fork an instance's trusted init, learn when that ends.

One `Template` per runner environment. The forked init is the template's
child, not the supervisor's, so it cannot be waited for with waitpid: the
template reaps it and reports its wait status, and `ForkedProcess` turns that
into the `returncode` and `wait()` the slot uses (confine/launch.Process).
If the template dies, every instance it forked dies with it (their monitors
hold PR_SET_PDEATHSIG on it): each is reported as killed, and the next start
starts a new template.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from pathlib import Path

from .launch import die_with_parent

log = logging.getLogger("precinct.confine")

READY_TIMEOUT = 60.0        # the imports, on a busy machine
FORK_TIMEOUT = 30.0
KILLED = -signal.SIGKILL


class TemplateError(RuntimeError):
    """The template cannot start or fork; the message says why."""


class ForkedProcess:
    """An instance's init forked by a template (see the module docstring)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._ended = asyncio.Event()

    def ended(self, status: int) -> None:
        self.returncode = os.waitstatus_to_exitcode(status) if status >= 0 else status
        self._ended.set()

    async def wait(self) -> int:
        await self._ended.wait()
        assert self.returncode is not None
        return self.returncode


def package_parent() -> str:
    """The sys.path entry the template adds for precinct itself (dropped
    again before the runner runs: the plugin has no business there)."""
    return str(Path(__file__).resolve().parents[2])


def trusted_command(python: str, module: str, *flags: str) -> list[str]:
    """`python` running `module.main()`, isolated (-I: no environment, no
    user site), importing precinct from where this file lives, not from
    whatever PYTHONPATH says."""
    code = (f"import sys; sys.path.insert(0, {package_parent()!r}); "
            f"from {module} import main; sys.exit(main())")
    return [python, "-I", *flags, "-c", code]


def _command(python: str, fd: int, module: str) -> list[str]:
    """The runner environment's interpreter, with its own site-packages;
    -B: root leaves no .pyc files in the runner environment."""
    return [*trusted_command(python, "precinct.confine.template", "-B"), str(fd), str(os.getpid()), module]


class Template:
    def __init__(self, python: str, module: str) -> None:
        self.python = python
        self.module = module
        self.pid: int | None = None
        self._sock: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Lock = asyncio.Lock()
        self._pending: dict[int, asyncio.Future] = {}
        self._forked: dict[int, ForkedProcess] = {}
        self._next = 0

    @property
    def alive(self) -> bool:
        return self._sock is not None

    async def ensure(self) -> None:
        """Started and ready (starting it if needed), or TemplateError."""
        async with self._starting:
            if self._sock is None:
                await self._start()

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *_command(self.python, theirs.fileno(), self.module),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                pass_fds=[theirs.fileno()], cwd="/", env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                start_new_session=True, preexec_fn=die_with_parent(os.getpid()))
        except OSError as exc:
            ours.close()
            raise TemplateError(f"cannot start {self.python}: {exc}") from None
        finally:
            theirs.close()
        ours.setblocking(False)
        try:
            first = await asyncio.wait_for(loop.sock_recv(ours, 65536), READY_TIMEOUT)
        except asyncio.TimeoutError:
            first = b""
            why = f"no answer within {READY_TIMEOUT:g} s"
        else:
            why = "it exited while importing the runner"
        hello = _decode(first)
        if "ready" not in hello:
            ours.close()
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()
            raise TemplateError(hello.get("error") or why)
        self.pid = int(hello["ready"])
        self._sock = ours
        loop.add_reader(ours, self._readable)
        log.info("template for %s ready (pid %d)", self.python, self.pid)

    async def fork(self, config: str, output: int) -> ForkedProcess:
        """Fork an instance's init with CONFIG (init.json), its output on `output`."""
        await self.ensure()
        sock = self._sock
        assert sock is not None
        self._next += 1
        req = self._next
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[req] = future
        body = json.dumps({"req": req, "config": config}).encode()
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [output]).tobytes())]
        try:
            while True:
                try:
                    sock.sendmsg([body], rights)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.01)    # the template is busy forking; its queue drains in ms
            proc = await asyncio.wait_for(future, FORK_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            raise TemplateError(f"the template did not fork: {exc or 'no answer'}") from None
        finally:
            self._pending.pop(req, None)
        return proc

    def _readable(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._lost()
                return
            self._handle(_decode(data))

    def _handle(self, msg: dict) -> None:
        if "exit" in msg:
            proc = self._forked.pop(int(msg["exit"]), None)
            if proc is not None:
                proc.ended(int(msg["status"]))
            return
        future = self._pending.get(msg.get("req"))
        if future is None or future.done():
            return
        if "pid" in msg:
            # Registered now, not when fork() resumes: the exit may be in the next datagram.
            proc = self._forked[int(msg["pid"])] = ForkedProcess(int(msg["pid"]))
            future.set_result(proc)
        else:
            future.set_exception(TemplateError(str(msg.get("error") or "refused")))

    def _lost(self) -> None:
        """The template is gone, and with it every instance it forked."""
        if self._sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._sock)
            self._sock.close()
            self._sock = None
        log.warning("template for %s (pid %s) is gone; its instances with it", self.python, self.pid)
        for proc in self._forked.values():
            proc.ended(KILLED)
        self._forked.clear()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(TemplateError("the template exited"))

    async def close(self) -> None:
        if self._sock is not None:
            self._lost()
        if self._proc is not None and self._proc.returncode is None:
            try:
                await asyncio.wait_for(self._proc.wait(), 10)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
                await self._proc.wait()


def _decode(data: bytes) -> dict:
    try:
        msg = json.loads(data)
    except ValueError:
        return {}
    return msg if isinstance(msg, dict) else {}

