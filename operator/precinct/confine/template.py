"""The template process of one runner environment: imports the runner once,
then forks every plugin instance's trusted init from that state.

Started by the supervisor (root, host namespaces) with the runner
environment's own interpreter, so that what it imports is exactly what the
runner would import after an exec:

    <runner python> -I -B -c "...; from precinct.confine.template import main" FD PARENT MODULE

FD is a SOCK_SEQPACKET socket to the supervisor (confine/forked.py), PARENT
the supervisor's pid, MODULE the runner's module (`precinct_runner`).

Why: a fresh interpreter per instance (the init's three processes, then the
runner's own exec and imports) was most of a plugin's cold start and most of
its memory. Forked from here, the init, its monitor and the runner share the
template's pages (the interpreter's heap, nats-py, asyncio, the runner) until
they write them; `gc.freeze()` keeps the collector from writing them all.

What stays as strict as with an exec (confine/init.py does every step; this
module only replaces `python -I -S init.py CONFIG`):
  * the child enters its own session, arms PR_SET_PDEATHSIG on the template
    and checks the template is still its parent, exactly as the monitor did
    with the supervisor; the template arms the same on the supervisor;
  * no descriptor of the template survives in the child but the instance's
    output pipe (on 1 and 2) and /dev/null (on 0);
  * no plugin code, no plugin dependency is ever imported here: the runner
    imports the plugin after the drop, Landlock and seccomp (init.runner).

What a fork shares that an exec would not (docs/threat-model.md): the str
hash secret, the address-space layout and the stack canary of the template.
`PRECINCT_CONFINE_DISABLE=zygote` starts every instance by exec instead.

Protocol (one JSON object per datagram):
  template -> supervisor  {"ready": pid}   once, after the imports
  supervisor -> template  {"req": n, "config": PATH} + SCM_RIGHTS [output fd]
  template -> supervisor  {"req": n, "pid": pid} or {"req": n, "error": text}
  template -> supervisor  {"exit": pid, "status": wait status}   when one ends
The template exits when the supervisor's end closes.
"""

from __future__ import annotations

import array
import gc
import importlib
import importlib.util
import json
import os
import select
import signal
import socket
import sys
import threading

MAX_MESSAGE = 16384


def _preload(module: str) -> None:
    """Everything an instance needs before the plugin's own code: the trusted
    init with what it imports lazily, and the runner with what it imports."""
    from precinct.confine import broker, connect_fence, init, landlock, seccomp  # noqa: F401

    # What init imports after the fork (_rlimits, _become_runner): once, here.
    import atexit  # noqa: F401
    import io  # noqa: F401
    import random  # noqa: F401
    import resource  # noqa: F401
    import traceback  # noqa: F401
    import types  # noqa: F401

    # The runner's `__main__`, compiled now: after the fork its file is no
    # longer where it was imported from (the view hides the host's copy).
    # Importing it once as a module imports everything it imports.
    name = f"{module}.__main__"
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or not hasattr(spec.loader, "get_code"):
        raise ImportError(f"no module {name}")
    importlib.import_module(name)
    init.RUNNER_MAIN = (spec.loader.get_code(name), spec.origin)
    # And the runner's modules it imports only later (the plugin loader, ...).
    import pkgutil

    package = importlib.import_module(module)
    for info in pkgutil.iter_modules(package.__path__, f"{module}."):
        importlib.import_module(info.name)
    # What nats-py imports only when it signs in with credentials (every
    # plugin does): libsodium through cffi, the slowest import of a start.
    try:
        importlib.import_module("nkeys")
    except ImportError:
        pass
    init.PACKAGE_PATHS = [m.__path__ for m in list(sys.modules.values()) if isinstance(getattr(m, "__path__", None), list)]


def _receive(ctl: socket.socket) -> tuple[bytes, list[int]]:
    fds = array.array("i")
    data, ancillary, _flags, _addr = ctl.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4 * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def _send(ctl: socket.socket, message: dict) -> None:
    ctl.send(json.dumps(message).encode())


def _child(config: str, output: int, ctl: socket.socket) -> None:
    """In the forked child: become the instance's monitor (init.monitor). Never returns."""
    from precinct.confine import init

    template = os.getppid()
    try:
        os.setsid()                 # its own process group: the slot signals the whole group
        init.prctl(init.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != template:
            raise init.SetupError("the template is gone")
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        # Nothing of the template's survives: detach first, so that no Python
        # object later closes a descriptor number something else reuses.
        ctl.detach()
        os.closerange(3, 1 << 16)
        with open(config) as fh:
            cfg = json.load(fh)
        init.monitor(cfg, parent=template)
    except init.SetupError as exc:
        init.say(str(exc))
    except BaseException as exc:  # noqa: BLE001 - anything here ends the instance, never the template
        init.say(f"{type(exc).__name__}: {exc}")
    os._exit(init.EXIT_SETUP)


def _fork(request: dict, fds: list[int], ctl: socket.socket) -> int:
    config = request.get("config")
    if not isinstance(config, str) or len(fds) != 1:
        raise ValueError("a fork request needs a config path and exactly one output descriptor")
    if threading.active_count() != 1:
        raise RuntimeError("the template has more than one thread; refusing to fork")
    pid = os.fork()
    if pid == 0:
        _child(config, fds[0], ctl)
    return pid


def _reap(ctl: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(ctl, {"exit": pid, "status": status})


def serve(ctl: socket.socket) -> int:
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _sig, _frame: None)
    _send(ctl, {"ready": os.getpid()})
    while True:
        ready, _, _ = select.select([ctl, wake_r], [], [])
        if wake_r in ready:
            while True:
                try:
                    if not os.read(wake_r, 512):
                        break
                except BlockingIOError:
                    break
            _reap(ctl)
        if ctl not in ready:
            continue
        data, fds = _receive(ctl)
        if not data:
            return 0                # the supervisor's end is closed
        request: dict = {}
        try:
            request = json.loads(data)
            pid = _fork(request, fds, ctl)
        except (ValueError, RuntimeError, OSError) as exc:
            _send(ctl, {"req": request.get("req") if isinstance(request, dict) else None, "error": str(exc)})
        else:
            _send(ctl, {"req": request.get("req"), "pid": pid})
        finally:
            for fd in fds:
                os.close(fd)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        sys.stderr.write("usage: template.py CONTROL_FD SUPERVISOR_PID RUNNER_MODULE\n")
        return 2
    from precinct.confine import init

    ctl = socket.socket(fileno=int(argv[0]))
    init.prctl(init.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(argv[1]):
        return 1                    # the supervisor died before the prctl took effect
    try:
        _preload(argv[2])
    except Exception as exc:  # noqa: BLE001 - reported to the supervisor, which starts by exec instead
        _send(ctl, {"error": f"cannot import the runner: {type(exc).__name__}: {exc}"})
        return 1
    # Everything imported so far is shared with every child: keep the
    # collector from touching (and so copying) those pages in each of them.
    gc.collect()
    gc.freeze()
    return serve(ctl)
