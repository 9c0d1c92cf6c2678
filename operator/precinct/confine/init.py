"""The tiny trusted init of one plugin instance: `python -m precinct.confine.init CONFIG`.

Forked by its runner environment's template (template.py), or started by the
supervisor (root) from its event loop's thread when there is none; CONFIG is
a JSON file written by `host.HostConfinement.wrap` in the supervisor's
private state dir. Three processes, only the last untrusted:

  monitor   (host PID namespace, root)  holds PR_SET_PDEATHSIG=SIGKILL on the
            supervisor's thread; creates the PID namespace; forwards stop
            signals; hands the runner its connections to NATS (broker.py);
            exits the way the plugin exited (code, or same signal).
  ns-init   (PID 1 of the new PID namespace, root)  holds PR_SET_PDEATHSIG on
            the monitor; unshares mount, network, IPC and UTS namespaces;
            brings up loopback and creates the listeners there (the relay's
            or the egress proxy's); mounts a
            private /proc and the plugin's view under /run/precinct/sandbox;
            forks the runner; reaps. When it dies the kernel kills every
            process in the namespace, so nothing the plugin started survives
            the supervisor, even a SIGKILLed one.
  runner    (PID 2)  joins the plugin's cgroups as root, then asks the
            supervisor over a unix socket to verify its membership (the
            supervisor reads /proc/<pid>/cgroup itself, using the pid the
            kernel reports for the socket peer), hands over the relay
            listeners, waits for "go"; then drops to the plugin's uid/gid,
            sets no_new_privs, applies Landlock and seccomp, and execs the
            runner (forked from the template: runs the runner it already has
            imported, `_become_runner`). Any failure before that ends it with
            exit code 126 and a `precinct-init:` line on stderr: fail closed,
            never run unconfined.

Only the standard library and the sibling landlock/seccomp modules; no
precinct imports at module level (startup cost is paid per plugin).
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 32, 4096, 8192, 16384, 1 << 18
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_DUMPABLE = 4

SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
IFF_UP = 0x1

EXIT_SETUP = 126
BROKER_FD = 3
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

_libc = ctypes.CDLL(None, use_errno=True)
# Set by the template (template.py): the runner's `__main__` code and file.
RUNNER_MAIN: tuple | None = None
PACKAGE_PATHS: list[list[str]] = []     # and the __path__ of every package it imported


class SetupError(Exception):
    pass


def say(message: str) -> None:
    try:
        os.write(2, f"precinct-init: {message}\n".encode(errors="replace"))
    except OSError:
        pass


def _ok(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)}")


def prctl(option: int, arg: int) -> None:
    _ok(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl({option})")


def unshare(flags: int) -> None:
    _ok(_libc.unshare(ctypes.c_int(flags)), f"unshare({flags:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    _ok(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
        f"mount({source} -> {target}, {fstype})")


# -- the monitor (host PID namespace) -----------------------------------------


def monitor(cfg: dict, parent: int | None = None) -> None:
    """`parent`: who started us (the template, template.py), if not the supervisor."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != (parent or cfg["supervisor_pid"]):
        raise SetupError("the supervisor is gone" if parent is None else "the template is gone")
    status_r, status_w = os.pipe()
    alive_r, alive_w = os.pipe()     # ns-init sees EOF here once the monitor is gone
    # The NATS channel (broker.py): our end stays here, in the host's network
    # namespace; the other becomes the runner's fd 3.
    ours = theirs = None
    if cfg.get("broker"):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if cfg.get("pidns"):
        unshare(CLONE_NEWPID)        # our next child is PID 1 of a new namespace
    child = os.fork()
    if child == 0:
        os.close(status_r)
        os.close(alive_w)
        if ours is not None:
            ours.close()
        try:
            ns_init(cfg, status_w, alive_r, theirs)
        except BaseException as exc:  # noqa: BLE001 - anything here ends the instance
            say(f"{type(exc).__name__}: {exc}" if not isinstance(exc, SetupError) else str(exc))
            os._exit(EXIT_SETUP)
        os._exit(0)
    os.close(status_w)
    os.close(alive_r)
    if theirs is not None:
        theirs.close()

    def forward(sig: int, _frame: object) -> None:
        try:
            os.kill(child, sig)
        except ProcessLookupError:
            pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    if ours is not None:
        _serve_broker(cfg, ours, child)
    _pid, status = os.waitpid(child, 0)
    raw = b""
    try:
        raw = os.read(status_r, 8)
    except OSError:
        pass
    if len(raw) == 8:
        kind, value = struct.unpack("ii", raw)
    elif os.WIFSIGNALED(status):
        kind, value = 1, os.WTERMSIG(status)
    else:
        kind, value = 0, os.WEXITSTATUS(status)
    if kind == 1:
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        if value not in (signal.SIGKILL, signal.SIGSTOP):
            with contextlib.suppress(OSError, ValueError):
                signal.signal(value, signal.SIG_DFL)
        os.kill(os.getpid(), value)
        os._exit(128 + value)
    os._exit(value)


def _serve_broker(cfg: dict, channel: socket.socket, child: int) -> None:
    """Hand NATS connections to the runner until ns-init exits."""
    from precinct.confine.broker import Broker, BrokerError, join_fence

    spec = cfg["broker"]
    try:
        join_fence(spec["fence_procs"], spec["fence_cgroup"])
    except (OSError, BrokerError) as exc:
        # Never hand out an unfenced socket: the runner gets no NATS and the instance fails its ping.
        say(f"NATS sockets not handed out: {exc}")
        channel.close()
        return
    host, port = spec["nats"]
    broker = Broker(channel, (host, int(port)), spec.get("counters"))
    channel.setblocking(False)
    pidfd = os.pidfd_open(child)
    try:
        while True:
            wait = broker.wants_read()
            watch = [pidfd] if wait else [pidfd, channel]
            ready, _, _ = select.select(watch, [], [], wait or None)
            if pidfd in ready:
                return
            if channel in ready and not broker.serve_one():
                # The runner's end is closed: nothing more to serve; wait for the exit.
                select.select([pidfd], [], [])
                return
    finally:
        os.close(pidfd)
        channel.close()


# -- PID 1 of the plugin's namespaces -----------------------------------------


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def _listen(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    return s


def _build_view(cfg: dict) -> None:
    """The plugin's files, reachable whatever the modes of the directories
    they really live in: a small tmpfs at cfg["sandbox"] holding bind mounts."""
    root = cfg["sandbox"]
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
    for bind in cfg["binds"]:
        target = os.path.join(root, bind["dst"])
        if bind["kind"] == "dir":
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w"):
                pass
        mount(bind["src"], target, None, MS_BIND | MS_REC)
        flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV
        if bind.get("ro"):
            flags |= MS_RDONLY
        if bind.get("noexec"):
            flags |= MS_NOEXEC
        mount(None, target, None, flags)
    mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _detach(cfg: dict) -> None:
    """Drop from this mount namespace the copies of host mounts it must not
    hold: the supervisor's per-plugin data mounts (disk.DATA_ROOT). Our own
    is bound into the view by now; a copy of another plugin's mount kept
    here (hidden or not) would keep that plugin's filesystem alive after the
    supervisor unmounted it, and a later mount would be a second one."""
    for path in cfg.get("detach") or []:
        if os.path.isdir(path):
            _ok(_libc.umount2(path.encode(), ctypes.c_int(MNT_DETACH)), f"umount2({path})")


def _hide_host_dirs(cfg: dict) -> None:
    """Cover the host directories in cfg["hide"] with empty tmpfs mounts, so that
    no host pathname unix socket (/tmp, /run, ...) exists for the plugin:
    Landlock does not cover connect() to those. The sandbox view is already
    bound by now, so hiding where its sources live does not matter. The one
    directory that holds the view itself (/run) gets a fresh tmpfs containing
    only the view: built at a staging point, the view moved into it, the whole
    moved over /run."""
    hide = [d for d in cfg.get("hide") or [] if os.path.isdir(d) and not os.path.islink(d)]
    sandbox = cfg["sandbox"]
    holder = next((d for d in hide if sandbox.startswith(d.rstrip("/") + "/")), None)
    if holder is not None:
        stage = next((d for d in hide if d != holder and not sandbox.startswith(d.rstrip("/") + "/")), None)
        if stage is None:
            raise SetupError(f"no staging directory to rebuild {holder} in")
        mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
        inner = os.path.join(stage, os.path.relpath(sandbox, holder))
        os.makedirs(inner, mode=0o755)
        mount(sandbox, inner, None, MS_MOVE)
        mount(stage, holder, None, MS_MOVE)
        mount(None, holder, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for d in hide:
        if d == holder:
            continue
        scratch = d in cfg.get("scratch", ())
        mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              "size=1m,mode=1777" if scratch else "size=16k,mode=0755")
        if not scratch:
            mount(None, d, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _mount_proc() -> None:
    try:
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible,subset=pid")
    except SetupError:
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")


def ns_init(cfg: dict, status_w: int, alive_r: int, channel: socket.socket | None = None) -> None:
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    # Imported now, as root: after the drop the supervisor's interpreter and
    # its packages may not be readable any more.
    import resource  # noqa: F401

    from precinct.confine import landlock, seccomp  # noqa: F401
    ready, _, _ = select.select([alive_r], [], [], 0)
    if ready:                                   # EOF: the monitor died before we armed the signal
        os._exit(EXIT_SETUP)
    flags = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | (CLONE_NEWNET if cfg.get("netns") else 0)
    unshare(flags)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    with contextlib.suppress(OSError):
        socket.sethostname(cfg["plugin_id"][:63])
    listeners: list[socket.socket] = []
    if cfg.get("netns"):
        _loopback_up()
        listeners = [_listen(spec["port"]) for spec in cfg.get("listeners", [])]
    if cfg.get("pidns"):
        _mount_proc()
    _build_view(cfg)
    _detach(cfg)
    _hide_host_dirs(cfg)
    child = os.fork()
    if child == 0:
        try:
            runner(cfg, listeners, channel)
        except BaseException as exc:  # noqa: BLE001
            say(f"{type(exc).__name__}: {exc}" if not isinstance(exc, SetupError) else str(exc))
        os._exit(EXIT_SETUP)
    for s in listeners:
        s.close()
    if channel is not None:
        channel.close()

    def forward(sig: int, _frame: object) -> None:
        try:
            os.kill(child, sig)
        except ProcessLookupError:
            pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            status = 0
            break
        if pid == child:
            break
    if os.WIFSIGNALED(status):
        report = struct.pack("ii", 1, os.WTERMSIG(status))
    else:
        report = struct.pack("ii", 0, os.WEXITSTATUS(status))
    try:
        os.write(status_w, report)
    except OSError:
        pass
    if cfg.get("pidns"):
        try:
            os.kill(-1, signal.SIGKILL)             # everything else in the namespace
        except ProcessLookupError:
            pass


# -- the plugin process, until exec ----------------------------------------------


def _join_cgroups(cfg: dict) -> None:
    for procs in cfg.get("cgroup_procs", []):
        with open(procs, "w") as fh:
            fh.write("0")
    expected = cfg.get("cgroup_expected") or {}
    if expected:
        shown = {}
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                parts = line.rstrip("\n").split(":", 2)
                if len(parts) == 3:
                    shown[parts[1]] = parts[2]
        for field, path in expected.items():
            if shown.get(field) != path:
                raise SetupError(f"not in cgroup {path} ({field or 'unified'}: {shown.get(field)!r}); refusing to start")


def _handshake(cfg: dict, listeners: list[socket.socket]) -> None:
    """Supervisor verifies us (cgroups, namespaces) and takes the listeners."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(cfg["handshake"])
        body = json.dumps({"instance": cfg["instance"], "listeners": [spec["name"] for spec in cfg.get("listeners", [])
                                                                     if cfg.get("netns")]}).encode()
        fds = array.array("i", [x.fileno() for x in listeners])
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())] if listeners else []
        s.sendmsg([body], ancillary)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    for x in listeners:
        x.close()
    if cfg.get("handshake_in_view"):        # bound into the view only for this: gone before plugin code runs
        _ok(_libc.umount2(cfg["handshake"].encode(), ctypes.c_int(MNT_DETACH)), "umount2(handshake)")
    text = reply.decode(errors="replace").strip()
    if text != "go":
        raise SetupError(f"the supervisor refused to start this instance: {text or 'no answer'}")


def _drop(cfg: dict) -> None:
    uid, gid = cfg["uid"], cfg["gid"]
    os.setgroups([])
    if uid == 0:                # the uid layer is switched off (status says MISSING)
        return
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        raise SetupError("privileges were not dropped")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise SetupError("could regain root after dropping privileges")


def _landlock(cfg: dict) -> None:
    from precinct.confine import landlock as ll

    spec = cfg["landlock"]
    rules = ll.Ruleset(spec["abi"])
    for path in spec.get("read_exec", []):
        rules.allow_path(path, ll.READ_EXEC)
    for path in spec.get("read", []):
        rules.allow_path(path, ll.READ)
    for path in spec.get("write", []):
        rules.allow_path(path, ll.READ | ll.WRITE_TREE)
    for path in spec.get("devices", []):
        rules.allow_path(path, ll.READ_FILE | ll.WRITE_FILE | ll.IOCTL_DEV)
    for port in spec.get("connect", []):
        rules.allow_connect(port)
    # No exec follows when the runner runs in this process: log its refusals too.
    rules.restrict_self(log_this_exec=bool(cfg.get("in_process")))


def _rlimits(cfg: dict) -> None:
    import resource

    for name, value in (cfg.get("rlimits") or {}).items():
        res = getattr(resource, name)
        resource.setrlimit(res, (value, value))


def runner(cfg: dict, listeners: list[socket.socket], channel: socket.socket | None = None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _join_cgroups(cfg)
    _rlimits(cfg)
    _handshake(cfg, listeners)
    _drop(cfg)
    if cfg.get("in_process"):
        # An exec would make us dumpable again after the uid change; without
        # one, /proc/self would stay root's and the runner could not read it.
        prctl(PR_SET_DUMPABLE, 1)
    os.umask(0o077)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    if cfg.get("landlock"):
        _landlock(cfg)
    os.chdir(cfg["cwd"])
    if channel is not None:          # the NATS channel is fd 3 (PRECINCT_NATS_FD); nothing else is kept
        if channel.fileno() != BROKER_FD:
            os.dup2(channel.fileno(), BROKER_FD)
            channel.close()
        else:
            channel.detach()         # fd 3 stays; no object may close it later
        os.set_inheritable(BROKER_FD, True)
        os.closerange(BROKER_FD + 1, 1 << 16)
    else:
        os.closerange(3, 1 << 16)
    if cfg.get("seccomp"):
        from precinct.confine import seccomp

        seccomp.install()
    if cfg.get("in_process"):
        _become_runner(cfg)
    os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])


def _become_runner(cfg: dict) -> None:
    """Run the runner here, as `python -m MODULE ARGS` would after the exec:
    forked from the template (template.py), it has the runner imported
    already. Confined exactly as before an exec; only Python's own state is
    set to what a fresh interpreter would have. Never returns."""
    import atexit
    import importlib
    import io
    import random
    import threading
    import traceback
    import types

    spec = cfg["in_process"]
    if RUNNER_MAIN is None:
        raise SetupError("no runner imported: in_process needs the template (template.py)")
    main_code, main_file = RUNNER_MAIN
    os.environ.clear()
    os.environ.update(cfg["env"])
    # The template imported from host paths; the plugin's view shows the runner
    # environment elsewhere (its host directory is hidden): later imports look there.
    moves = sorted(spec.get("paths", {}).items(), key=lambda kv: -len(kv[0]))

    def inside(path: str) -> str:
        for host, view in moves:
            if path == host or path.startswith(host.rstrip("/") + "/"):
                return view + path[len(host):]
        return path

    sys.path[:] = [inside(p) for p in sys.path if p not in spec.get("drop", [])]
    # Packages look for submodules in their __path__. Only the packages the
    # template listed: touching every module would copy a page per module.
    for search in PACKAGE_PATHS:
        search[:] = [inside(p) for p in search]
    sys.executable, sys.prefix, sys.exec_prefix = inside(sys.executable), inside(sys.prefix), inside(sys.exec_prefix)
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
    for sig in range(1, signal.NSIG):
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)   # as a fresh interpreter sets them
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    random.seed()
    unbuffered = bool(cfg["env"].get("PYTHONUNBUFFERED"))
    for fd, name in ((1, "stdout"), (2, "stderr")):
        stream = io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                                  line_buffering=True, write_through=unbuffered)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    main_file = inside(main_file)
    sys.argv = [main_file, *spec["args"]]
    code: object = 0
    try:
        # As `python -m MODULE` runs it: its __main__, as the module __main__
        # (not the template's: pickle and friends look there).
        main_module = types.ModuleType("__main__")
        main_module.__dict__.update(__file__=main_file, __package__=spec["module"], __builtins__=__builtins__)
        sys.modules["__main__"] = main_module
        exec(main_code, main_module.__dict__)  # nosec B102 - the runner's own __main__, compiled by the template
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # noqa: BLE001 - as the interpreter would: print it, exit 1
        traceback.print_exc()
        code = 1
    # What interpreter shutdown does that a plugin may rely on: wait for its
    # non-daemon threads, run atexit handlers, flush.
    with contextlib.suppress(Exception):
        threading._shutdown()  # type: ignore[attr-defined]
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    if code is None:
        code = 0
    elif not isinstance(code, int):
        with contextlib.suppress(Exception):
            print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code & 0xFF)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        say("usage: python -m precinct.confine.init CONFIG.json")
        return 2
    try:
        with open(argv[0]) as fh:
            cfg = json.load(fh)
        monitor(cfg)
    except SetupError as exc:
        say(str(exc))
        return EXIT_SETUP
    return 0


if __name__ == "__main__":
    sys.exit(main())
