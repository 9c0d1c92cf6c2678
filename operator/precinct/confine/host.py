"""`HostConfinement`: the single-host kernel sandbox behind `precinct up`.

The supervisor calls `set_plan()` with a plugin's sandbox plan and host
paths before each launch; `wrap()` then prepares everything (uid, cgroups,
the plugin's view of its files, the handshake socket) and returns the command
that starts the trusted init (init.py) instead of the runner. See
docs/confinement.md for what each layer stops and what it does not.

Everything wrap() sets up is the instance's own (files under
confine/<id>/<instance>/, a cgroup leaf under the plugin's cgroup, the
handshake), so a hot reload starts the new instance beside the old one;
release(id, instance) undoes one instance and never touches the other. The
uid, the data image and the plugin's cgroup are the plugin's.

The data image is mounted once per plugin, here, by the supervisor
(disk.mount_shared); each instance binds that mount into its view. At most
one instance's bind is read-write: an instance that may write its data dir,
started while another holds it read-write (a hot reload), gets a read-only
bind and a runner told to wait (PRECINCT_DATA_WAIT): it answers its health
ping but constructs and initializes the plugin only once `activate()` has
remounted its bind read-write (dataflip.py), after the old one has exited.
The mount goes when the plugin's last instance has ended.

`PRECINCT_CONFINE_DISABLE` (comma-separated: uid, cgroups, pidns, netns,
landlock, seccomp, disk, view, handoff, zygote) switches layers off for debugging and for proving that
the attack tests fail without them; status then reports each as
"MISSING: disabled by PRECINCT_CONFINE_DISABLE". Never silent. (`handoff`
is not a protection: without it the plugin reaches NATS through the relay,
as safe and slower. Nor is `zygote`: without it each instance starts by
exec instead of being forked from its runner environment's template,
template.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import stat
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..plan.sandbox import SandboxPlan
from ..settings import HostSettings, SettingsError
from ..wire import environment as env_names
from . import broker, disk, landlock, seccomp
from .connect_fence import ConnectFence, FenceError
from .cgroups import CgroupError, CgroupHost, PluginCgroup
from .cgroups import _parse_proc_cgroup as parse_proc_cgroup
from .egress import PROXY_PORT, EgressProxy, parse_allow
from .forked import Template, TemplateError, package_parent, trusted_command
from .launch import Confinement, LaunchSpec
from .procstats import ProcessStats
from .procstats import sample as proc_sample
from .refusals import EGRESS, KernelRecords, Ledger
from .relay import ListenerServer, nats_relay
from .uids import UidError, allocate

log = logging.getLogger("precinct.confine")

RUN_DIR = Path("/run/precinct")
SANDBOX = RUN_DIR / "sandbox"         # where each plugin sees its own files (a tmpfs in its mount namespace)
HANDSHAKE_DIR = RUN_DIR / "hs"
IN_CODE = SANDBOX / "code"
IN_RUNNER = SANDBOX / "runner"
IN_CREDS = SANDBOX / "nats.creds"
IN_CONFIG = SANDBOX / "config.json"
IN_DATA = SANDBOX / "data"
IN_DEPS = SANDBOX / "deps"            # the plugin's installed dependencies (runtime/plugin_deps.py), read-only

LAYERS = ("uid", "cgroups", "pidns", "netns", "landlock", "seccomp", "disk", "view", "handoff", "zygote")
# How a plugin reaches NATS (status `network`): a connected socket handed into
# its namespace by its trusted monitor (broker.py), or the supervisor's relay.
NETWORK_HANDOFF = "netns+handoff"
NETWORK_RELAY = "netns+relay"
DISABLE_ENV = env_names.CONFINE_DISABLE
# TEST-ONLY: ADDR:PORT pairs the egress proxy lets plugins reach although the
# policy refuses them (a local stand-in for a public service). The operator's
# environment, never a manifest; status names every entry.
EGRESS_ALLOW_ENV = env_names.EGRESS_TEST_ALLOW
HANDSHAKE_TIMEOUT = 60.0

# Read and execute: the Python runtime and shared libraries.
SYSTEM_READ_EXEC = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")
# Read only: what the C library and Python consult at start, and TLS roots.
SYSTEM_READ = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/ssl",
               "/etc/ca-certificates", "/etc/pki", "/etc/nsswitch.conf", "/etc/host.conf", "/etc/hosts",
               "/etc/gai.conf", "/etc/mime.types", "/etc/python3", "/etc/python3.11", "/etc/python3.12",
               "/etc/python3.13", "/proc")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
# Covered with an empty tmpfs in the plugin's mount namespace (the view layer):
# where host pathname unix sockets live (Landlock does not cover connecting to
# them). /run is rebuilt holding only the sandbox view; a symlink (Debian's
# /var/run -> /run) is left alone; a directory the runner needs is never hidden.
# Hidden, not used: the plugin gets its own empty tmpfs there (Landlock still refuses writing it).
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # nosec B108 - covered by an empty private tmpfs, never written by us
HIDDEN_DIRS = ("/run", "/var/run", *SCRATCH_DIRS, "/var/lib", "/var/spool", "/home", "/root", "/srv", "/mnt",
               "/media", "/opt")

MISSING = "MISSING"


def missing(why: str) -> str:
    return f"{MISSING}: {why}"


def _option(argv: list[str], name: str) -> str | None:
    """The value after `name` in a command line, if it is there."""
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


def _isolated(module: str) -> list[str]:
    """How to start a trusted helper (init.py, dataflip.py): this
    interpreter, isolated (forked.trusted_command). `-S`: the helpers are
    standard library only, and skipping site-packages saves a third of the
    interpreter's start."""
    return trusted_command(sys.executable, module, "-S")


def _init_command() -> list[str]:
    return _isolated("precinct.confine.init")


def _flip_command() -> list[str]:
    return _isolated("precinct.confine.dataflip")


def _mount_data(image: Path, target: Path, size: int, uid: int, gid: int, seed: Path | None) -> str:
    """Create or grow the image, then make the plugin's one mount of it under
    the root-only DATA_ROOT; what status says of it. Called only while no
    instance of the plugin runs."""
    if disk.is_mounted(target):
        # Left by a supervisor of this state dir that was killed (its plugins died with it).
        problem = disk.unmount_shared(target)
        if problem:
            raise disk.DiskError(problem)
        log.info("unmounted %s, left mounted by an earlier supervisor", target)
    # An instance that just ended may still hold the filesystem for a moment;
    # neither resize2fs nor a new mount may touch the image until it is free.
    busy = disk.wait_detached(image) if image.exists() else []
    if busy:
        raise disk.DiskError(f"{image} is still attached to {', '.join(busy)} after its last instance ended")
    status = disk.ensure_image(image, size, uid, gid, seed)
    disk.ensure_data_root()
    _private_dir(target.parent)
    disk.mount_shared(image, target, uid, gid)
    return status


@dataclass
class Capabilities:
    root: bool
    cgroups: CgroupHost | None
    cgroups_problem: str
    landlock_abi: int
    seccomp_problem: str | None
    namespaces_problem: str | None
    disk_problem: str | None = None
    handoff_problem: str | None = None     # why NATS connections are relayed, not handed in


@dataclass
class _Instance:
    """One instance of a plugin: everything a second instance started beside
    it (a hot reload, runtime/rollout.py) must not share or overwrite."""

    name: str
    confdir: Path                          # <state>/confine/<id>/<instance>: code, creds, config, init.json
    nats: tuple[str, int] = ("127.0.0.1", 4222)
    cgroup: PluginCgroup | None = None     # its leaf under the plugin's cgroup
    memory_bytes: int = 0                  # its limits, which the plugin cgroup's backstop must cover
    pids: int = 0
    servers: list[ListenerServer] = field(default_factory=list)
    handshake: asyncio.Task | None = None
    handshake_sock: socket.socket | None = None
    membership: str = "pending"
    enforcement: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    # Its data dir bind: "rw", "ro" (data_dir: read), or "wait" (may write,
    # read-only until activate(); a hot reload's new instance), "" (none).
    data_access: str = ""
    mnt_ns: int | None = None              # its mount namespace's inode, read when it was verified


@dataclass
class _Plugin:
    id: str
    plan: SandboxPlan | None = None        # set_plan(): for the next wrap() only
    folder: Path | None = None
    creds: Path | None = None
    config: Path | None = None
    nats: tuple[str, int] = ("127.0.0.1", 4222)
    uid: int | None = None
    # Holds no process: the CPU quota its instances share, and a memory and
    # pids backstop (`backstop`, as last written) above their own limits.
    cgroup: PluginCgroup | None = None
    backstop: tuple[int, int] = (0, 0)
    # The supervisor's one mount of the data image (disk.mount_shared), while an instance may use it.
    data_mount: Path | None = None
    data_status: str = ""
    instances: dict[str, _Instance] = field(default_factory=dict)   # in the order they started
    last: _Instance | None = None          # the latest that ended: its enforcement shows until the next starts
    # Held while an instance's cgroup is made or removed, so the plugin
    # cgroup is never removed under an instance being set up.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def current(self, instance: str | None = None, ended: bool = True) -> _Instance | None:
        """`instance`; without one, the newest that runs (the one status
        shows: a rollout stops the older). `ended`: else the latest that ended
        (how it was enforced, while the plugin waits to restart)."""
        found = self.instances.get(instance) if instance is not None else next(reversed(self.instances.values()), None)
        if found is None and ended and self.last is not None and instance in (None, self.last.name):
            return self.last
        return found


def environment_problem() -> str | None:
    """What is wrong with the PRECINCT_* settings this module reads, for `precinct up` to say before starting."""
    try:
        settings = HostSettings.load()
    except SettingsError as exc:
        return str(exc)
    unknown = settings.disabled_layers - set(LAYERS)
    if unknown:
        return f"{DISABLE_ENV}: unknown layer(s) {', '.join(sorted(unknown))}; known: {', '.join(LAYERS)}"
    try:
        parse_allow(settings.egress_test_allow)
    except ValueError as exc:
        return f"{EGRESS_ALLOW_ENV}: {exc}"
    return None


def _private_dir(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    return path


def _copy_tree_readable(src: Path, dest: Path) -> None:
    """A snapshot of the plugin's code that any uid may read (the checkout's
    own modes and parent dirs do not matter)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git"))
    for dirpath, dirnames, filenames in os.walk(dest):
        os.chmod(dirpath, 0o755)  # nosec B103 - a root-owned read-only code snapshot every plugin uid must traverse; holds no secrets
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            os.chmod(path, 0o755 if mode & 0o100 else 0o644)


def _install_secret(src: Path, dest: Path, uid: int, gid: int) -> None:
    """Copy `src` to `dest`, readable by `uid` only (0400)."""
    data = src.read_bytes()
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, 0o400)
    finally:
        os.close(fd)
    os.replace(tmp, dest)


async def _recv_handshake(sock: socket.socket, timeout: float) -> tuple[socket.socket, dict, list[int], int]:
    """Accept the init's connection, read its message and the listening
    sockets it passes, and the kernel's word on who it is (SO_PEERCRED pid,
    translated into our PID namespace)."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    conn, _ = await asyncio.wait_for(loop.sock_accept(sock), timeout)
    conn.setblocking(False)
    try:
        readable = loop.create_future()
        loop.add_reader(conn.fileno(), lambda: readable.done() or readable.set_result(None))
        try:
            await asyncio.wait_for(readable, 10)
        finally:
            loop.remove_reader(conn.fileno())
        fd_size = struct.calcsize("i")
        msg, ancdata, _flags, _addr = conn.recvmsg(65536, socket.CMSG_SPACE(8 * fd_size))
        fds: list[int] = []
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(data) - len(data) % fd_size
                fds += list(struct.unpack(f"{usable // fd_size}i", data[:usable]))
        cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, _uid, _gid = struct.unpack("3i", cred)
    except BaseException:
        conn.close()
        raise
    try:
        body = json.loads(msg.decode() or "{}")
    except ValueError:
        body = {}
    return conn, body, fds, pid


def _access(p: _Plugin, inst: _Instance, writes: bool) -> str:
    """The data bind an instance gets. At most one read-write bind per
    plugin: a writer starting beside one waits ("wait") for activate()."""
    if not writes:
        return "ro"
    holder = any(i.data_access == "rw" for i in p.instances.values() if i is not inst)
    return "wait" if holder else "rw"


class HostConfinement(Confinement):
    def __init__(self, state_dir: Path, disable: Iterable[str] | None = None) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.disabled = set(disable) if disable is not None else HostSettings.load().disabled_layers
        unknown = self.disabled - set(LAYERS)
        if unknown:
            raise ValueError(f"{DISABLE_ENV}: unknown layer(s) {', '.join(sorted(unknown))}; known: {', '.join(LAYERS)}")
        self._caps: Capabilities | None = None
        self._plugins: dict[str, _Plugin] = {}
        try:
            self.egress_allow = parse_allow(HostSettings.load().egress_test_allow)
        except ValueError as exc:
            raise ValueError(f"{EGRESS_ALLOW_ENV}: {exc}") from None
        # Refusals (refusals.py): counted per plugin; strikes go to `on_refusal_strike`
        # (the supervisor's violation ladder) when it is set.
        self.on_refusal_strike = None
        self.ledger = Ledger(on_strike=lambda plugin_id, event: self.on_refusal_strike
                             and self.on_refusal_strike(plugin_id, event))
        self._audit_reader = None
        self._reporting: dict[str, str] = {}
        self._audit_lost_at_start: int | None = None
        self._owners: dict[tuple[int, int], tuple[str | None, float]] = {}
        self._fence_for: tuple[tuple[str, int], ConnectFence | str] | None = None
        # One template process per runner environment (confine/template.py).
        self._templates: dict[str, Template] = {}

    # -- what this host can do ----------------------------------------------------

    def capabilities(self) -> Capabilities:
        if self._caps is not None:
            return self._caps
        root = os.geteuid() == 0
        cgroups, problem = None, ""
        if root and not self._layer("cgroups"):
            problem = f"disabled by {DISABLE_ENV}"
        elif root:
            try:
                cgroups = CgroupHost.detect(CgroupHost.tag_for(self.state_dir))
                cgroups.prepare()
            except (CgroupError, OSError) as exc:
                cgroups, problem = None, f"no usable cgroup: {exc}"
        else:
            problem = "the supervisor is not root"
        self._caps = Capabilities(
            root=root, cgroups=cgroups, cgroups_problem=problem, landlock_abi=landlock.abi(),
            seccomp_problem=seccomp.supported(), namespaces_problem=self._probe_namespaces() if root else "not root",
            disk_problem=disk.problem(),
        )
        self._caps.handoff_problem = self._handoff_problem(self._caps)
        if root and self._caps.disk_problem is None:
            # A supervisor of this state dir killed with SIGKILL leaves its data
            # mounts behind (its plugins died with it): none can be in use now.
            for problem in disk.sweep(disk.DATA_ROOT / CgroupHost.tag_for(self.state_dir)):
                log.warning("data image left mounted by an earlier supervisor: %s", problem)
        for d, mode in ((RUN_DIR, 0o755), (SANDBOX, 0o755), (HANDSHAKE_DIR, 0o700)):
            _private_dir(d, mode)
        return self._caps

    def _handoff_problem(self, caps: Capabilities) -> str | None:
        """Why NATS sockets cannot be handed in safely here (broker.py names the layers it needs)."""
        for layer in ("handoff", "netns", "seccomp"):
            if not self._layer(layer):
                return f"{layer} disabled by {DISABLE_ENV}"
        return caps.seccomp_problem or caps.namespaces_problem

    def _fence(self, nats: tuple[str, int]) -> ConnectFence | str:
        """The connect fence for this NATS endpoint (one per supervisor), or why there is none."""
        if self._fence_for is not None and self._fence_for[0] == nats:
            return self._fence_for[1]
        try:
            fence: ConnectFence | str = ConnectFence.create(CgroupHost.tag_for(self.state_dir), *nats)
        except (FenceError, OSError) as exc:
            fence = f"no connect fence: {exc.strerror or exc}"
            log.warning("NATS traffic is relayed: %s", fence)
        self._fence_for = (nats, fence)
        return fence

    @staticmethod
    def _probe_namespaces() -> str | None:
        probe = ("import ctypes, os, sys\n"
                 "libc = ctypes.CDLL(None, use_errno=True)\n"
                 "if libc.unshare(0x20000000 | 0x00020000 | 0x40000000 | 0x08000000 | 0x04000000) != 0:\n"
                 "    sys.exit(os.strerror(ctypes.get_errno()))\n")
        try:
            done = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            return str(exc)
        return None if done.returncode == 0 else f"unshare failed: {done.stderr.strip() or done.returncode}"

    # -- the supervisor's side of the contract ---------------------------------------

    def set_plan(self, plugin_id: str, *, plan: SandboxPlan, folder: Path, creds: Path, config: Path,
                 nats: tuple[str, int]) -> None:
        p = self._plugins.setdefault(plugin_id, _Plugin(plugin_id))
        p.plan, p.folder, p.creds, p.config, p.nats = plan, Path(folder), Path(creds), Path(config), nats

    def _layer(self, name: str) -> bool:
        return name not in self.disabled

    # Two instances of a plugin may run side by side: each has its own files,
    # cgroup leaf, handshake and relay, so starting one never touches another.
    instances_per_plugin = 2

    def can_overlap(self, old: SandboxPlan, new: SandboxPlan) -> bool:
        return self.overlap_problem(old, new) is None

    def overlap_problem(self, old: SandboxPlan, new: SandboxPlan) -> str | None:
        """Why `new` cannot start beside a running `old` (None: it can).
        Writing the data dir is no reason any more: both instances bind the
        one mount, and the new one's bind becomes read-write only after the
        old one has exited (activate()). A changed disk_limit is: the image
        is grown (resize2fs) only while nothing has it mounted."""
        if "none" in (old.fence.data_dir, new.fence.data_dir):
            return None
        if old.limits.disk_bytes != new.limits.disk_bytes:
            return (f"disk_limit changes ({old.limits.disk_bytes // 2**20} MiB -> {new.limits.disk_bytes // 2**20} MiB): "
                    "the data image is resized only while no instance has it mounted")
        return None

    def data_pending(self, plugin_id: str, instance: str | None) -> bool:
        """Is this instance waiting for activate() (read-only bind, plugin not initialized)?"""
        inst = self._instance(plugin_id, instance) if instance else None
        return inst is not None and inst.data_access == "wait"

    async def activate(self, plugin_id: str, instance: str) -> str | None:
        """Switch-over of a hot reload: remount the waiting instance's data
        bind read-write inside its mount namespace (dataflip.py). Refused
        while another instance of the plugin still holds it read-write.
        None when done (or nothing to do), else why not."""
        p = self._plugins.get(plugin_id)
        inst = p.instances.get(instance) if p is not None else None
        if p is None or inst is None:
            return f"instance {instance} of {plugin_id} is not running"
        async with p.lock:
            if inst.data_access != "wait":
                return None
            holder = next((i.name for i in p.instances.values() if i is not inst and i.data_access == "rw"), None)
            if holder is not None:
                return f"instance {holder} still holds the data dir read-write"
            pid = inst.details.get("runner_pid")
            if inst.mnt_ns is None or not pid:
                return f"instance {instance} was never verified"
            proc = await asyncio.create_subprocess_exec(
                *_flip_command(), f"/proc/{pid}/ns/mnt", str(inst.mnt_ns), str(IN_DATA),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                _, err = await asyncio.wait_for(proc.communicate(), 30)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                return "the remount helper did not finish within 30 s"
            if proc.returncode != 0:
                text = err.decode(errors="replace").strip().removeprefix("precinct-dataflip: ")
                return f"remount refused: {text or f'exit code {proc.returncode}'}"
            inst.data_access = "rw"
            inst.enforcement["data_dir"] = "read-write"
            inst.details["data_access"] = "rw"
            log.info("plugin %s: data dir read-write in instance %s", plugin_id, instance)
            return None

    async def _data_dir(self, p: _Plugin, inst: _Instance, image: Path, seed: Path | None, size: int,
                        uid: int, gid: int, writes: bool) -> Path:
        """The plugin's one mount of its image (made now if no instance has it
        mounted: created or grown first), and the access this instance gets.
        Under the plugin's lock, so release() never unmounts under a start."""
        loop = asyncio.get_running_loop()
        target = disk.DATA_ROOT / CgroupHost.tag_for(self.state_dir) / p.id
        async with p.lock:
            if p.data_mount is None or not disk.is_mounted(p.data_mount):
                p.data_status = await loop.run_in_executor(None, _mount_data, image, target, size, uid, gid, seed)
                if seed is not None:
                    seed.rename(seed.with_name(f"{p.id}.migrated"))
                p.data_mount = target
            elif max(size, disk.MIN_BYTES) > image.stat().st_size:
                p.data_status = (f"ext4 image {image.stat().st_size // 2**20} MiB (loop mount; disk_limit "
                                 f"{size // 2**20} MiB applies at the next start with no instance running)")
            inst.data_access = _access(p, inst, writes)
            return target

    async def wrap(self, plugin_id: str, spec: LaunchSpec) -> LaunchSpec:
        p = self._plugins.get(plugin_id)
        if p is None or p.plan is None:
            raise RuntimeError(f"no sandbox plan for {plugin_id}: the supervisor must call set_plan() first")
        caps = self.capabilities()
        if not caps.root:
            raise RuntimeError("HostConfinement needs root")
        self._start_reporting()
        # The plan is for this launch: read it all now, before any await lets another launch set its own.
        plan, folder, plan_creds, plan_config = p.plan, p.folder, p.creds, p.config
        p.plan = None
        enf: dict[str, str] = {}
        confdir = self.state_dir / "confine" / plugin_id / spec.instance
        inst = p.instances[spec.instance] = _Instance(spec.instance, confdir, nats=p.nats)

        # Identity.
        if self._layer("uid"):
            try:
                uid = allocate(self.state_dir, plugin_id)
            except UidError as exc:
                raise RuntimeError(str(exc)) from None
            enf["uid"] = str(uid)
        else:
            uid = 0
            enf["uid"] = missing(f"disabled by {DISABLE_ENV}: plugin code runs as root")
        gid = uid
        p.uid = uid
        enf["no_new_privs"] = "yes"

        # Files: code snapshot, credentials, config, data dir. Per instance:
        # the instance running beside this one keeps reading its own.
        _private_dir(confdir.parent)
        _private_dir(confdir)
        code = confdir / "code"
        await asyncio.get_running_loop().run_in_executor(None, _copy_tree_readable, folder, code)
        creds = confdir / "nats.creds"
        _install_secret(plan_creds, creds, uid, gid)
        config = confdir / "config.json"
        _install_secret(plan_config, config, uid, gid)
        data_mode = plan.fence.data_dir
        data = self.state_dir / "plugin-data" / plugin_id
        image = data.with_name(f"{plugin_id}.img")
        binds: list[dict[str, Any]] = [
            {"src": str(code), "dst": "code", "kind": "dir", "ro": True},
            {"src": str(creds), "dst": "nats.creds", "kind": "file", "ro": True, "noexec": True},
            {"src": str(config), "dst": "config.json", "kind": "file", "ro": True, "noexec": True},
        ]
        runner_python = Path(spec.argv[0])
        env_dir = runner_python.parent.parent
        mapping = {str(folder): str(IN_CODE), str(plan_creds): str(IN_CREDS), str(plan_config): str(IN_CONFIG)}
        # A venv is bound into the view at IN_RUNNER; a plain interpreter's prefix is only readable.
        venv = (env_dir / "pyvenv.cfg").is_file()
        if venv:
            binds.append({"src": str(env_dir), "dst": "runner", "kind": "dir", "ro": True})
            mapping[str(runner_python)] = str(IN_RUNNER / "bin" / runner_python.name)
        deps = _option(spec.argv, "--deps")
        if deps is not None:      # shared, root-owned and read-only: one plugin cannot alter another's wheels
            binds.append({"src": deps, "dst": "deps", "kind": "dir", "ro": True})
            mapping[deps] = str(IN_DEPS)
        data_host: Path | None = None
        data_src: Path | None = None
        enf["disk"] = "no data dir granted"
        if data_mode != "none":
            _private_dir(data.parent)
            why = caps.disk_problem if self._layer("disk") else f"disabled by {DISABLE_ENV}"
            if why is None:
                seed = data if (data.is_dir() and not image.exists()) else None
                try:
                    data_src = await self._data_dir(p, inst, image, seed, plan.limits.disk_bytes, uid, gid,
                                                    data_mode == "write")
                except (disk.DiskError, OSError) as exc:
                    why = f"data image unusable: {exc}"
                else:
                    enf["disk"] = p.data_status
                    data_host = image
            if data_src is None:
                data.mkdir(exist_ok=True)
                os.chown(data, uid, gid)
                os.chmod(data, 0o700)
                # A plain directory: the same one-writer rule, by the same bind flip.
                inst.data_access = _access(p, inst, data_mode == "write")
                data_src = data_host = data
                enf["disk"] = missing(f"{why}: the data dir can fill the host's disk")
            binds.append({"src": str(data_src), "dst": "data", "kind": "dir", "ro": inst.data_access != "rw",
                          "noexec": True})
        enf["data_dir"] = {"": "none granted", "ro": "read-only", "rw": "read-write",
                           "wait": "read-only until the instance it replaces has stopped (hot reload)"}[inst.data_access]

        argv = [mapping.get(a, a) for a in spec.argv]
        env = dict(spec.env)
        env["HOME"] = str(IN_DATA if data_mode != "none" else SANDBOX)
        if data_mode != "none":
            env[env_names.DATA_DIR] = str(IN_DATA)
        if inst.data_access == "wait":      # the runner initializes the plugin once activate() has run
            env[env_names.DATA_WAIT] = "1"
        http = "http-egress-public" in plan.fence.network

        # Limits.
        cgroup_procs: list[str] = []
        cgroup_expected: dict[str, str] = {}
        rlimits: dict[str, int] = {"RLIMIT_CORE": 0}
        limits = plan.limits
        if caps.cgroups is not None and self._layer("cgroups"):
            inst.cgroup = await self._instance_cgroup(p, inst, caps.cgroups, limits)
            v = caps.cgroups.version
            cgroup_procs = [str(d / "cgroup.procs") for d in inst.cgroup.dirs()]
            cgroup_expected = inst.cgroup.expected_paths()
            enf["memory"] = f"cgroup-{v}"
            enf["cpu"] = f"cgroup-{v} {'cfs quota' if v == 'v1' else 'cpu.max'}"
            enf["pids"] = f"cgroup-{v}"
        else:
            why = caps.cgroups_problem if self._layer("cgroups") else f"disabled by {DISABLE_ENV}"
            rlimits["RLIMIT_AS"] = max(limits.memory_bytes * 4, 512 * 2**20)
            enf["memory"] = f"rlimit-as {rlimits['RLIMIT_AS']} (a MemoryError, not a kill; {missing(why)})"
            enf["cpu"] = missing(why)
            if uid:
                rlimits["RLIMIT_NPROC"] = limits.pids
                enf["pids"] = f"rlimit-nproc (per uid; {missing(why)})"
            else:
                enf["pids"] = missing(why)

        # Namespaces and the network.
        pidns = self._layer("pidns") and caps.namespaces_problem is None
        netns = self._layer("netns") and caps.namespaces_problem is None
        if not self._layer("pidns"):
            enf["pidns"] = missing(f"disabled by {DISABLE_ENV}: plugin processes may outlive a killed supervisor")
            enf["proc"] = missing("host /proc: other processes are visible")
        elif caps.namespaces_problem:
            enf["pidns"] = enf["proc"] = missing(caps.namespaces_problem)
        else:
            enf["pidns"] = "yes"
            enf["proc"] = "private (hidepid)"
        nats_host, nats_port = inst.nats
        listeners = []
        fence = self._fence(inst.nats) if (netns and caps.handoff_problem is None) else caps.handoff_problem
        handoff = isinstance(fence, ConnectFence)
        handoff_cfg = None
        relayed_because = None
        proxy_port = PROXY_PORT
        if isinstance(fence, ConnectFence):
            # The monitor hands the runner connected sockets (broker.py). Landlock
            # allows one TCP port, so the egress proxy listens on that port inside:
            # a disconnected host socket reconnected to 3128 must find nothing.
            proxy_port = nats_port
            handoff_cfg = {"nats": [nats_host, nats_port], "counters": str(confdir / "broker.json"),
                           "fence_procs": str(fence.procs), "fence_cgroup": fence.rel}
            env[env_names.NATS_FD] = "3"
            enf["network"] = NETWORK_HANDOFF
        elif netns:
            listeners.append({"name": "nats", "port": nats_port})
            # Inside, the relay listens where the runner would find NATS on loopback.
            inside = f"nats://127.0.0.1:{nats_port}"
            argv = [inside if a == f"nats://{nats_host}:{nats_port}" else a for a in argv]
            enf["network"] = NETWORK_RELAY
            relayed_because = fence
        if netns:
            if http:
                listeners.append({"name": "egress", "port": proxy_port})
                proxy = f"http://127.0.0.1:{proxy_port}"
                env.update(HTTP_PROXY=proxy, HTTPS_PROXY=proxy, http_proxy=proxy, https_proxy=proxy)
                env["NO_PROXY"] = env["no_proxy"] = ""
                enf["egress"] = "proxy (public addresses only, ports 80/443)"
                if self.egress_allow:
                    enf["egress"] += (f"; {EGRESS_ALLOW_ENV} also allows "
                                      + ", ".join(f"{a}:{port}" for a, port in sorted(self.egress_allow)))
        else:
            why = f"disabled by {DISABLE_ENV}" if not self._layer("netns") else caps.namespaces_problem
            enf["network"] = missing(f"{why}: the host network is reachable (Landlock limits TCP ports only)")
            if http:
                enf["egress"] = missing(f"{why}: http_requests goes out unfiltered")

        # Landlock and seccomp.
        landlock_spec = None
        if self._layer("landlock") and caps.landlock_abi >= 1:
            read_exec = [*SYSTEM_READ_EXEC, str(IN_CODE), str(IN_RUNNER), *([str(IN_DEPS)] if deps else [])]
            if not venv:
                read_exec.append(str(env_dir))
            landlock_spec = {
                "abi": caps.landlock_abi,
                "read_exec": read_exec,
                "read": [*SYSTEM_READ, str(IN_CREDS), str(IN_CONFIG)] + ([str(IN_DATA)] if data_mode == "read" else []),
                "write": [str(IN_DATA)] if data_mode == "write" else [],
                "devices": list(DEVICES),
                "connect": sorted({nats_port, proxy_port if (http and netns) else nats_port}),
            }
            enf["landlock"] = f"abi-{caps.landlock_abi}"
            if caps.landlock_abi < 6:
                enf["landlock"] += " (no signal scoping before ABI 6)"
        else:
            why = f"disabled by {DISABLE_ENV}" if not self._layer("landlock") else "Landlock is not available on this kernel"
            enf["landlock"] = missing(f"{why}: only file modes fence the filesystem")
        use_seccomp = self._layer("seccomp") and caps.seccomp_problem is None
        if use_seccomp:
            enf["seccomp"] = "bpf"
        else:
            why = f"disabled by {DISABLE_ENV}" if not self._layer("seccomp") else caps.seccomp_problem
            enf["seccomp"] = missing(f"{why}: io_uring, UDP, raw and netlink sockets, ptrace are allowed")
        enf["cgroup-membership"] = "pending" if inst.cgroup is not None else "n/a"

        # Host directories covered in its mount namespace (init._hide_host_dirs).
        hide: list[str] = []
        if self._layer("view"):
            needed = [*SYSTEM_READ_EXEC, *SYSTEM_READ, *DEVICES, *(landlock_spec or {}).get("read_exec", [])]
            hide = [d for d in HIDDEN_DIRS if os.path.isdir(d) and not os.path.islink(d)
                    and not any(n == d or n.startswith(d + "/") for n in needed if not n.startswith(str(RUN_DIR)))]
            enf["host_dirs"] = "hidden (empty tmpfs): " + " ".join(hide)
        else:
            enf["host_dirs"] = missing(f"disabled by {DISABLE_ENV}: host /tmp and /run are visible, and their "
                                       "unix sockets reachable (Landlock does not cover connect)")

        # The handshake socket: only root can reach it (0700 dir).
        hs_path = HANDSHAKE_DIR / f"{secrets.token_hex(8)}.sock"
        hs = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        hs.bind(str(hs_path))
        os.chmod(hs_path, 0o600)
        hs.listen(1)
        inst.handshake_sock = hs
        inst.handshake = asyncio.create_task(self._handshake(p, inst, hs, hs_path, pidns, netns, http),
                                             name=f"confine-handshake:{plugin_id}:{spec.instance}")
        handshake = str(hs_path)
        if any(str(HANDSHAKE_DIR).startswith(d + "/") for d in hide):
            # /run is hidden before the runner connects: it reaches the socket
            # through the view, and unmounts it there right after.
            binds.append({"src": str(hs_path), "dst": ".handshake", "kind": "file"})
            handshake = str(SANDBOX / ".handshake")

        # How the instance starts: forked from its runner environment's template,
        # which has the runner imported (template.py), or by exec.
        template, in_process = await self._template_for(spec.argv, argv, {str(env_dir): str(IN_RUNNER)} if venv else {},
                                                        enf)

        cfg = {
            "in_process": in_process,
            "plugin_id": plugin_id, "instance": spec.instance, "supervisor_pid": os.getpid(),
            "uid": uid, "gid": gid, "cgroup_procs": cgroup_procs, "cgroup_expected": cgroup_expected,
            "rlimits": rlimits, "handshake": handshake, "handshake_in_view": handshake != str(hs_path),
            "hide": hide, "scratch": list(SCRATCH_DIRS), "sandbox": str(SANDBOX), "binds": binds,
            "detach": [str(disk.DATA_ROOT)] if disk.is_mounted(disk.DATA_ROOT) else [],
            "pidns": pidns, "netns": netns, "listeners": listeners, "broker": handoff_cfg, "landlock": landlock_spec,
            "seccomp": use_seccomp, "argv": argv, "env": env,
            "cwd": str(IN_CODE),
        }
        cfg_path = confdir / "init.json"
        fd = os.open(cfg_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(cfg, fh, indent=1)
        inst.enforcement = enf
        inst.details = {
            **({"network_relayed_because": relayed_because} if relayed_because else {}),
            "nats_channel": str(confdir / "broker.json") if handoff else None,
            **({"nats_fence": str(fence.directory)} if isinstance(fence, ConnectFence) else {}),
            "uid": uid, "gid": gid, "instance": spec.instance,
            "cgroup_version": caps.cgroups.version if inst.cgroup else None,
            # Where its processes are (the instance's leaf), and the plugin cgroup above it.
            "cgroups": {c: str(inst.cgroup.dir(c)) for c in inst.cgroup.host.hierarchies} if inst.cgroup else {},
            "plugin_cgroups": {c: str(p.cgroup.dir(c)) for c in p.cgroup.host.hierarchies}
            if inst.cgroup and p.cgroup else {},
            "data_dir": str(data_host) if data_host else None, "code": str(code),
            "data_mount": str(p.data_mount) if data_host == image and p.data_mount else None,
            "data_access": inst.data_access or None,
            "creds": str(creds), "init_config": str(cfg_path), "sandbox": str(SANDBOX),
        }
        return LaunchSpec(argv=[*_init_command(), str(cfg_path)],
                          env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd="/", instance=spec.instance,
                          template=template)

    async def _template_for(self, host_argv: list[str], argv: list[str], paths: dict[str, str],
                            enf: dict[str, str]) -> tuple[str | None, dict | None]:
        """The template that forks this launch and what the forked runner runs,
        or (None, None) to start it by exec; `enf["process"]` says which and why.
        `paths`: host directory -> where the view shows it (the runner environment)."""
        if not self._layer("zygote"):
            enf["process"] = f"exec (template disabled by {DISABLE_ENV})"
            return None, None
        if len(argv) < 3 or argv[1] != "-m":
            enf["process"] = "exec (not a `python -m` runner)"
            return None, None
        python, module = host_argv[0], argv[2]
        template = self._templates.get(python)
        if template is None or template.module != module:
            template = self._templates[python] = Template(python, module)
        try:
            await template.ensure()
        except TemplateError as exc:
            enf["process"] = f"exec (template unavailable: {exc})"
            return None, None
        enf["process"] = f"forked from template pid {template.pid}"
        return python, {"module": module, "args": argv[3:], "paths": paths, "drop": [package_parent()]}

    async def spawn(self, plugin_id: str, spec: LaunchSpec, output: int):
        if spec.template is None:
            return None
        try:
            return await self._templates[spec.template].fork(spec.argv[-1], output)
        except TemplateError as exc:
            raise RuntimeError(f"could not fork from the template: {exc}") from None

    async def _handshake(self, p: _Plugin, inst: _Instance, hs: socket.socket, hs_path: Path,
                         pidns: bool, netns: bool, http: bool) -> None:
        loop = asyncio.get_running_loop()
        try:
            conn, body, fds, pid = await _recv_handshake(hs, HANDSHAKE_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            inst.membership = f"{MISSING}: no handshake from the init ({exc})"
            return
        finally:
            with contextlib.suppress(OSError):
                hs.close()
            hs_path.unlink(missing_ok=True)
        listeners = [socket.socket(fileno=fd) for fd in fds]
        try:
            problems = self._verify(inst, pid, body, pidns, netns, len(listeners))
            if problems:
                inst.membership = f"{MISSING}: refused to start: {'; '.join(problems)}"
                log.error("plugin %s: %s", p.id, inst.membership)
                await loop.sock_sendall(conn, f"no: {'; '.join(problems)}\n".encode())
                for s in listeners:
                    s.close()
                return
            names = body.get("listeners") or []
            for name, listener in zip(names, listeners):
                if name == "nats":
                    server = nats_relay(f"{p.id}/nats", listener, *inst.nats)
                elif name == "egress" and http:
                    # This proxy serves this plugin's namespace only: its refusals are this plugin's.
                    proxy = EgressProxy(allow=self.egress_allow, on_refused=lambda reason, plugin_id=p.id:
                                        self.ledger.add(plugin_id, EGRESS, "403", reason, at_once=False))
                    server = proxy.server(f"{p.id}/egress", listener)
                else:
                    listener.close()
                    continue
                await server.start()
                inst.servers.append(server)
            inst.membership = f"verified (pid {pid})" if inst.cgroup is not None else "n/a"
            inst.details["runner_pid"] = pid
            with contextlib.suppress(OSError):   # which namespace activate() may enter, while it still is the runner's
                inst.mnt_ns = os.stat(f"/proc/{pid}/ns/mnt").st_ino
            await loop.sock_sendall(conn, b"go\n")
        finally:
            conn.close()

    def _verify(self, inst: _Instance, pid: int, body: dict, pidns: bool, netns: bool,
                listeners: int) -> list[str]:
        problems = []
        if body.get("instance") != inst.name:
            problems.append(f"instance mismatch ({body.get('instance')!r}, expected {inst.name!r})")
        if inst.cgroup is not None:
            # Its own leaf, not merely somewhere under the plugin's cgroup.
            problems += inst.cgroup.membership_problems(pid)
        for ns, wanted in (("pid", pidns), ("net", netns), ("mnt", True)):
            if not wanted:
                continue
            try:
                theirs = os.stat(f"/proc/{pid}/ns/{ns}").st_ino
                ours = os.stat(f"/proc/self/ns/{ns}").st_ino
            except OSError as exc:
                problems.append(f"/proc/{pid}/ns/{ns}: {exc.strerror}")
                continue
            if theirs == ours:
                problems.append(f"not in its own {ns} namespace")
        if netns and listeners != len(body.get("listeners") or []):
            problems.append("relay listeners missing")
        return problems

    @staticmethod
    def _end_instance(inst: _Instance) -> None:
        for server in inst.servers:
            server.close()
        inst.servers.clear()
        if inst.handshake_sock is not None:
            with contextlib.suppress(OSError):
                inst.handshake_sock.close()
            inst.handshake_sock = None
        if inst.handshake is not None and not inst.handshake.done():
            inst.handshake.cancel()
        inst.handshake = None

    # -- refusals -----------------------------------------------------------------

    def _start_reporting(self) -> None:
        """Once: read the kernel's refusal records (audit.py), turning audit on
        if Landlock needs it, and say honestly what is and is not reported."""
        if self._reporting:
            return
        from . import audit

        caps = self.capabilities()
        problem = None
        try:
            state = audit.status()
            self._audit_lost_at_start = state["lost"]
            if state["enabled"] == 0 and caps.landlock_abi >= landlock.AUDIT_ABI and self._layer("landlock"):
                audit.enable()
                log.info("kernel audit turned on: Landlock reports its refusals only while it is on")
                state = audit.status()
            self._audit_reader = audit.AuditReader(KernelRecords(self.ledger, self._owner))
            self._audit_reader.start()
        except OSError as exc:
            problem, state = f"cannot read kernel audit records: {exc}", {"enabled": 0}
            self._audit_reader = None
        if not self._layer("seccomp") or caps.seccomp_problem:
            self._reporting["seccomp"] = "n/a: no seccomp filter"
        else:
            why = problem or seccomp.logging_problem()
            self._reporting["seccomp"] = missing(why) if why else "kernel audit records (SECCOMP_FILTER_FLAG_LOG)"
        if not self._layer("landlock") or caps.landlock_abi < 1:
            self._reporting["landlock"] = "n/a: no Landlock"
        elif caps.landlock_abi < landlock.AUDIT_ABI:
            self._reporting["landlock"] = missing(f"Landlock ABI {caps.landlock_abi} writes no audit records "
                                                  "(ABI 7, Linux 6.15, does): refusals are enforced, not counted")
        elif problem or not state.get("enabled"):
            self._reporting["landlock"] = missing(problem or "kernel audit is off and could not be turned on")
        else:
            self._reporting["landlock"] = "kernel audit records (Landlock ABI 7)"
        self._reporting["egress"] = "counted by the egress proxy"

    def _owner(self, pid: int, uid: int) -> str | None:
        """The plugin a kernel-reported pid/uid belongs to: by the process's
        cgroups while it lives, else by its uid (one per plugin). Never by
        anything the plugin says. Answers are kept for a second: a flood of
        records from one process costs one lookup."""
        now = time.monotonic()
        cached = self._owners.get((pid, uid))
        if cached is not None and now - cached[1] < 1.0:
            return cached[0]
        if len(self._owners) > 4096:
            self._owners.clear()
        owner = self._lookup_owner(pid, uid)
        self._owners[(pid, uid)] = (owner, now)
        return owner

    def _lookup_owner(self, pid: int, uid: int) -> str | None:
        try:
            text = Path(f"/proc/{pid}/cgroup").read_text() if pid > 0 else None
        except OSError:
            text = None
        shown = parse_proc_cgroup(text) if text else {}
        for p in list(self._plugins.values()):
            if p.cgroup is not None and shown:
                # Its processes are in instance leaves under the plugin's cgroup.
                expected = p.cgroup.expected_paths()
                if expected and all(shown.get(k, "").startswith(v + "/") or shown.get(k) == v
                                    for k, v in expected.items()):
                    return p.id
        for p in list(self._plugins.values()):
            # By uid only when the cgroups could not say: the process is gone, or the plugin has none.
            if p.uid and p.uid == uid and (text is None or p.cgroup is None):
                return p.id
        return None

    def refusals(self, plugin_id: str) -> dict[str, Any]:
        """What was refused this plugin, by mechanism (status `refusals`)."""
        return self.ledger.summary(plugin_id)

    def refusal_reporting(self) -> dict[str, Any]:
        """Host-wide: how each mechanism reports, the policy, and what was lost."""
        from . import audit

        lost: dict[str, Any] = {}
        if self._audit_lost_at_start is not None:
            try:
                lost["kernel_backlog"] = audit.status()["lost"] - self._audit_lost_at_start
            except OSError:
                pass
        if self._audit_reader is not None:
            lost["socket_overflows"] = self._audit_reader.overflows
            lost["reader_over_budget"] = self._audit_reader.over_budget
        return {"reporting": dict(self._reporting), "policy": self.ledger.policy.describe(), "lost": lost}

    # -- reports ------------------------------------------------------------------

    def exit_reason(self, plugin_id: str, returncode: int, instance: str | None = None) -> str | None:
        inst = self._instance(plugin_id, instance)
        if inst is None:
            return None
        self._end_instance(inst)
        # Its own leaf's count: an OOM kill in the instance beside it is not its exit reason.
        if inst.cgroup is not None and inst.cgroup.oom_killed_since_start():
            return "OOMKilled"
        return None

    def sample(self, plugin_id: str, pid: int, instance: str | None = None) -> ProcessStats:
        inst = self._instance(plugin_id, instance)
        if inst is None or inst.cgroup is None:
            return proc_sample(pid)
        cpu = inst.cgroup.cpu_seconds()
        if cpu is None:
            cpu = proc_sample(pid).cpu_seconds
        return ProcessStats(cpu, inst.cgroup.memory_bytes())

    def enforcement(self, plugin_id: str, instance: str | None = None) -> dict[str, str]:
        inst = self._instance(plugin_id, instance)
        if inst is None or not inst.enforcement:
            return {}
        out = dict(inst.enforcement)
        if inst.cgroup is not None:
            out["cgroup-membership"] = inst.membership
        return out

    def details(self, plugin_id: str, kernel: bool = False) -> dict[str, Any]:
        """What the sandbox of this plugin is: uid, cgroup dirs, paths, and the
        limits as read back when they were set (no file read). `kernel` adds
        what only the kernel knows now (members, OOM kills, CPU and pids
        counters): about eight cgroup reads, so only for one plugin's status
        (`precinct status ID`), never for the whole fleet's; so are the
        monitor's NATS socket counts (a file read)."""
        p = self._plugins.get(plugin_id)
        inst = p.current(ended=False) if p is not None else None     # an ended one's cgroup and files are gone
        if inst is None:
            return {}
        out = dict(inst.details)
        channel = out.pop("nats_channel", None)
        if channel and kernel:
            # Counted by the instance's monitor (broker.py): sockets handed in, refused by the rate limit, failed.
            out["nats_sockets"] = broker.read_counts(channel) or {}
        if inst.cgroup is not None:
            out["limits"] = self._limits(p, inst, live=kernel)
            if kernel:
                with contextlib.suppress(OSError):
                    out["cgroup_pids"] = sorted(inst.cgroup.procs())
                    out["oom_kills"] = inst.cgroup.oom_kills()
                    out["cpu_stat"] = p.cgroup.cpu_stat() if p.cgroup else {}    # the quota is the plugin's
                    out["pids_refused"] = inst.cgroup.pids_refused()
        return out

    @staticmethod
    def _limits(p: _Plugin, inst: _Instance, live: bool = False) -> dict[str, int]:
        """As the kernel holds them: memory and pids from the instance's leaf,
        the CPU quota and the backstop from the plugin's cgroup. `live` reads
        the files now; else they are as read back when they were set."""
        def held(group: PluginCgroup | None) -> dict[str, int]:
            if group is None:
                return {}
            if live:
                with contextlib.suppress(OSError):
                    return group.limits()
            return dict(group.read_back)
        own, shared = held(inst.cgroup), held(p.cgroup)
        return {"memory": own.get("memory"), "pids": own.get("pids"),
                "cpu_quota_us": shared.get("cpu_quota_us"), "cpu_period_us": shared.get("cpu_period_us"),
                "plugin_memory": shared.get("memory"), "plugin_pids": shared.get("pids")}

    def _instance(self, plugin_id: str, instance: str | None) -> _Instance | None:
        p = self._plugins.get(plugin_id)
        return p.current(instance) if p is not None else None

    async def _instance_cgroup(self, p: _Plugin, inst: _Instance, host: CgroupHost, limits: Any) -> PluginCgroup:
        """The instance's leaf under the plugin's cgroup.

        `memory_limit` and `pids_limit` are each instance's own: a new
        instance starting beside the old one (a hot reload) can never OOM-kill
        it or take its pids. `cpu_limit` is the plugin's, shared by its
        instances: an overlap costs the host no more CPU. The plugin cgroup's
        memory and pids are a backstop: twice one instance's, and never less
        than what its running instances may use together. While an instance
        runs the backstop is only ever raised (lowering it could reclaim from,
        or on v2 OOM-kill, the running one); it starts afresh when the plugin
        starts with no instance running."""
        inst.memory_bytes, inst.pids = limits.memory_bytes, limits.pids
        async with p.lock:
            running = [i for i in p.instances.values() if i.cgroup is not None]
            if p.cgroup is None or not running:
                p.cgroup, p.backstop = host.plugin_group(p.id, fresh=True), (0, 0)
            memory = max(p.backstop[0], 2 * inst.memory_bytes, inst.memory_bytes + sum(i.memory_bytes for i in running))
            pids = max(p.backstop[1], 2 * inst.pids, inst.pids + sum(i.pids for i in running))
            p.cgroup.set_limits(limits.cpu_millicores, memory, pids)
            p.backstop = (memory, pids)
            return host.instance_group(p.cgroup, inst.name, inst.memory_bytes, inst.pids)

    async def release(self, plugin_id: str, instance: str | None = None) -> None:
        """An instance is over: its relay, its cgroup leaf and its files go,
        and nothing of the instance that may run beside it. With the
        plugin's last instance, the plugin's cgroup goes too. `instance`
        None: every instance of the plugin."""
        p = self._plugins.get(plugin_id)
        if p is None:
            return
        loop = asyncio.get_running_loop()
        for name in [instance] if instance is not None else list(p.instances):
            inst = p.instances.get(name)
            if inst is None:
                continue
            self._end_instance(inst)
            async with p.lock:
                if inst.cgroup is not None:
                    for problem in await loop.run_in_executor(None, inst.cgroup.remove):
                        log.warning("plugin %s: cgroup not removed: %s", plugin_id, problem)
                del p.instances[name]
                p.last = inst
                if not p.instances and p.cgroup is not None:
                    for problem in await loop.run_in_executor(None, p.cgroup.remove):
                        log.warning("plugin %s: cgroup not removed: %s", plugin_id, problem)
                    p.cgroup = None
                if not p.instances and p.data_mount is not None:
                    # No instance uses it: unmount (its last start may grow the image next time).
                    problem = await loop.run_in_executor(None, disk.unmount_shared, p.data_mount)
                    if problem:
                        log.warning("plugin %s: data image not unmounted: %s", plugin_id, problem)
                    else:
                        p.data_mount = None
            await loop.run_in_executor(None, shutil.rmtree, inst.confdir, True)
        if not p.instances:
            with contextlib.suppress(OSError):
                (self.state_dir / "confine" / plugin_id).rmdir()

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for p in list(self._plugins.values()):
            if p.data_mount is not None and not p.instances:     # left by a failed unmount: try again
                problem = await loop.run_in_executor(None, disk.unmount_shared, p.data_mount)
                if problem:
                    log.warning("plugin %s: data image not unmounted: %s", p.id, problem)
                p.data_mount = None
        fence = self._fence_for[1] if self._fence_for else None
        if isinstance(fence, ConnectFence):
            # Its monitors have exited with their plugins; the directory goes, and with it the programs.
            deadline = time.monotonic() + 10
            while fence.directory.exists() and time.monotonic() < deadline:
                fence.remove()
                if fence.directory.exists():
                    await asyncio.sleep(0.1)
        self._fence_for = None
        for template in self._templates.values():
            await template.close()
        self._templates.clear()


class UnprivilegedConfinement(Confinement):
    """What runs when the supervisor is not root: nothing is confined by the
    kernel, and status says so for every protection."""

    REASON = "the supervisor is not root"

    def enforcement(self, plugin_id: str, instance: str | None = None) -> dict[str, str]:
        why = self.REASON
        return {
            "uid": missing(f"{why}: plugins run as the supervisor's own uid and can read its files"),
            "memory": missing(why), "cpu": missing(why), "pids": missing(why), "disk": missing(why),
            "pidns": missing(f"{why}: plugin processes may outlive a killed supervisor"),
            "proc": missing(f"{why}: other processes are visible"),
            "landlock": missing(why), "seccomp": missing(why),
            "network": missing(f"{why}: the host network is reachable"),
            "host_dirs": missing(f"{why}: host /tmp and /run are visible"),
        }

    def details(self, plugin_id: str, kernel: bool = False) -> dict[str, Any]:
        return {}


def for_supervisor(state_dir: Path) -> Confinement:
    """HostConfinement as root, else the unconfined one that says so."""
    if os.geteuid() == 0:
        return HostConfinement(state_dir)
    return UnprivilegedConfinement()


__all__ = ["HostConfinement", "UnprivilegedConfinement", "for_supervisor"]
