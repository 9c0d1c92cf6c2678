"""CPU, memory and pids limits through cgroups: v2 where the supervisor's own
cgroup has the controllers delegated, v1 otherwise (detected, never assumed).

Where plugin cgroups live: nested under the supervisor's own cgroup in each
hierarchy (read from /proc/self/cgroup), as

    <supervisor's cgroup>/precinct-<hash of the state dir>/<plugin id>/i-<instance>

so a supervisor confined by its own parent (systemd, a CI job) confines its
plugins inside that, and two supervisors never share a cgroup. Processes live
only in the instance leaves, so two instances of one plugin (a hot reload,
runtime/rollout.py) run side by side, each with its own memory and pids
limit and its own OOM count, and one is killed without touching the other.
The plugin cgroup above them holds no process: it carries the CPU quota the
instances share and a memory and pids backstop (see HostConfinement).

Detection reads /proc/self/mountinfo and /proc/self/cgroup. A host with a v2
mount is not necessarily a v2 host: these machines mount cgroup2 at
/sys/fs/cgroup/unified with only `hugetlb` in it, and memory, cpu, cpuacct,
pids and freezer as v1 hierarchies. v2 is used only if memory, cpu and pids
are available in the supervisor's own v2 cgroup.

v2 and the "no internal processes" rule: controllers can be enabled for the
children of a non-root cgroup only while it holds no process itself. If the
supervisor's cgroup lacks them in cgroup.subtree_control, the processes in it
are moved into a leaf `precinct-supervisor` first (what a systemd service
with Delegate=yes is expected to do).

Joining happens in the plugin's trusted init, as root, before it drops
privileges: it writes "0" (itself) to cgroup.procs of each hierarchy. An
unprivileged uid cannot, and a failed write must never be ignored
(docs/confinement.md). The supervisor then checks /proc/<pid>/cgroup of the
process against `expected_paths()` before letting the plugin code start.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

NEEDED = ("memory", "cpu", "pids")
OPTIONAL_V1 = ("cpuacct", "freezer")
CFS_PERIOD_US = 100_000
MIN_QUOTA_US = 1_000


class CgroupError(RuntimeError):
    pass


def _read(path: Path) -> str:
    return path.read_text()


def _write(path: Path, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _kv(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            with contextlib.suppress(ValueError):
                out[parts[0]] = int(parts[1])
    return out


@dataclass(frozen=True)
class Hierarchy:
    """One mounted hierarchy and the supervisor's place in it."""

    mountpoint: Path
    controllers: tuple[str, ...]      # v1: e.g. ("cpu", "cpuacct"); v2: ()
    own: str                          # the supervisor's cgroup path in it, e.g. "/process_api/x"
    line: str                         # the /proc/<pid>/cgroup field identifying it ("memory", "cpu,cpuacct", "")

    def dir_of(self, rel: str) -> Path:
        return self.mountpoint / rel.lstrip("/")


def _parse_mountinfo(text: str) -> list[tuple[str, str, str, list[str]]]:
    """(mount root, mountpoint, fstype, super options) of every cgroup mount."""
    found = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        lf, rf = left.split(), right.split()
        if len(lf) < 5 or len(rf) < 3:
            continue
        fstype = rf[0]
        if fstype in ("cgroup", "cgroup2"):
            mountpoint = lf[4].replace("\\040", " ")
            found.append((lf[3], mountpoint, fstype, rf[2].split(",")))
    return found


def _parse_proc_cgroup(text: str) -> dict[str, str]:
    """controllers field ("memory", "cpu,cpuacct", "" for v2) -> path."""
    out = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out[parts[1]] = parts[2]
    return out


def _relative(path: str, mount_root: str) -> str:
    if mount_root != "/" and path.startswith(mount_root):
        path = path[len(mount_root):] or "/"
    return path


@dataclass
class CgroupHost:
    """Where and how this host's plugins get cgroups. Build with `detect()`."""

    version: str                                  # "v1" | "v2"
    hierarchies: dict[str, Hierarchy]             # controller -> hierarchy (v2: every controller -> the one)
    tag: str = "precinct"
    _prepared: bool = field(default=False, repr=False)

    # -- detection ------------------------------------------------------------

    @classmethod
    def detect(cls, tag: str, mountinfo: str | None = None, proc_cgroup: str | None = None,
               prefix: Path | None = None) -> "CgroupHost":
        """Raise CgroupError with the reason when neither version is usable.
        `prefix` re-roots every mountpoint (tests with a fake tree)."""
        mountinfo = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
        proc_cgroup = proc_cgroup if proc_cgroup is not None else Path("/proc/self/cgroup").read_text()
        mounts = _parse_mountinfo(mountinfo)
        mine = _parse_proc_cgroup(proc_cgroup)

        def rooted(mountpoint: str) -> Path:
            return Path(mountpoint) if prefix is None else prefix / mountpoint.lstrip("/")

        reasons = []
        # v2: the unified hierarchy, if our cgroup there has the controllers.
        for root, mountpoint, fstype, _opts in mounts:
            if fstype != "cgroup2" or "" not in mine:
                continue
            own = _relative(mine[""], root)
            h = Hierarchy(rooted(mountpoint), (), own, "")
            try:
                available = set(_read(h.dir_of(own) / "cgroup.controllers").split())
            except OSError as exc:
                reasons.append(f"cgroup v2 at {mountpoint}: {exc.strerror}")
                continue
            missing = [c for c in NEEDED if c not in available]
            if missing:
                reasons.append(f"cgroup v2 at {mountpoint} lacks {', '.join(missing)} in {own}")
                continue
            return cls("v2", {c: h for c in NEEDED}, tag)
        # v1: one hierarchy per controller (or co-mounted ones like cpu,cpuacct).
        hierarchies: dict[str, Hierarchy] = {}
        for root, mountpoint, fstype, opts in mounts:
            if fstype != "cgroup":
                continue
            controllers = tuple(o for o in opts if o in NEEDED + OPTIONAL_V1)
            if not controllers:
                continue
            line = next((k for k in mine if set(k.split(",")) >= set(controllers) and k), None)
            if line is None:
                continue
            h = Hierarchy(rooted(mountpoint), tuple(sorted(line.split(","))), _relative(mine[line], root), line)
            for c in controllers:
                hierarchies.setdefault(c, h)
        missing = [c for c in NEEDED if c not in hierarchies]
        if not missing:
            return cls("v1", hierarchies, tag)
        reasons.append(f"cgroup v1 lacks {', '.join(missing)}")
        raise CgroupError("; ".join(reasons) or "no cgroup filesystem mounted")

    # -- layout ---------------------------------------------------------------

    @staticmethod
    def tag_for(state_dir: Path) -> str:
        return "precinct-" + hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:10]

    def distinct(self) -> list[Hierarchy]:
        seen: dict[Path, Hierarchy] = {}
        for h in self.hierarchies.values():
            seen.setdefault(h.mountpoint, h)
        return list(seen.values())

    def parent_rel(self, h: Hierarchy) -> str:
        return f"{h.own.rstrip('/')}/{self.tag}"

    def rel(self, h: Hierarchy, plugin_id: str, instance: str | None = None) -> str:
        base = f"{self.parent_rel(h)}/{plugin_id}"
        return f"{base}/i-{instance}" if instance else base

    def prepare(self) -> None:
        """Create the per-supervisor parent cgroups (v2: enable controllers
        on the way) and remove empty leftovers of an earlier run."""
        if self._prepared:
            return
        for h in self.distinct():
            parent = h.dir_of(self.parent_rel(h))
            if self.version == "v2":
                self._delegate_v2(h, parent)
            else:
                parent.mkdir(exist_ok=True)
                if h.mountpoint == self.hierarchies["memory"].mountpoint:
                    self._hierarchical_memory(parent)
            for child in parent.iterdir() if parent.is_dir() else []:
                if child.is_dir():
                    _remove_empty(child)
        self._prepared = True

    @staticmethod
    def _hierarchical_memory(parent: Path) -> None:
        """v1: the plugin cgroup's backstop limits its instances only if
        memory.use_hierarchy is 1 (always, since Linux 5.11). Set it while
        there are no children yet; refuse cgroups if it stays 0."""
        flag = parent / "memory.use_hierarchy"
        if not flag.exists() or _read(flag).strip() == "1":
            return
        with contextlib.suppress(OSError):
            _write(flag, "1")
        if _read(flag).strip() != "1":
            raise CgroupError(f"{flag} reads 0: a plugin's memory backstop would not cover its instances")

    def _delegate_v2(self, h: Hierarchy, parent: Path) -> None:
        own = h.dir_of(h.own)
        wanted = list(NEEDED)
        enabled = set(_read(own / "cgroup.subtree_control").split())
        if not set(wanted) <= enabled:
            if h.own not in ("", "/") and self._procs(own):
                # No internal processes: move everything in our cgroup to a leaf.
                leaf = own / "precinct-supervisor"
                leaf.mkdir(exist_ok=True)
                for pid in self._procs(own):
                    with contextlib.suppress(OSError):
                        _write(leaf / "cgroup.procs", str(pid))
            _write(own / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
        parent.mkdir(exist_ok=True)
        enabled = set(_read(parent / "cgroup.subtree_control").split())
        if not set(wanted) <= enabled:
            _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))

    def plugin_group(self, plugin_id: str, fresh: bool) -> "PluginCgroup":
        """The plugin's cgroup, made if missing. `fresh`: no instance of the
        plugin runs, so anything found there is left from an earlier run
        (a killed supervisor) and is killed and removed first."""
        self.prepare()
        group = PluginCgroup(self, plugin_id)
        if fresh and any(d.is_dir() for d in group.dirs()):
            group.remove_tree()
        for d in group.dirs():
            if self.version == "v1":
                d.parent.mkdir(exist_ok=True)       # removed when its last plugin went
            d.mkdir(exist_ok=True)
        if self.version == "v2":
            # It holds no process, so it may hand the controllers to its instances.
            d = group.dir("memory")
            if not set(NEEDED) <= set(_read(d / "cgroup.subtree_control").split()):
                _write(d / "cgroup.subtree_control", " ".join(f"+{c}" for c in NEEDED))
        return group

    def instance_group(self, plugin: "PluginCgroup", instance: str, memory_bytes: int, pids: int) -> "PluginCgroup":
        """A leaf for one instance under `plugin`, with its own memory and
        pids limits; its CPU is the plugin's quota, shared."""
        group = PluginCgroup(self, plugin.plugin_id, instance=instance)
        for d in group.dirs():
            if d.is_dir():                      # the same 24-bit name again: whatever is there is stale
                group.kill_all()
                with contextlib.suppress(OSError):
                    d.rmdir()
            d.mkdir(exist_ok=True)
        group.set_limits(None, memory_bytes, pids)
        return group

    @staticmethod
    def _procs(d: Path) -> list[int]:
        try:
            return [int(x) for x in _read(d / "cgroup.procs").split()]
        except (OSError, ValueError):
            return []


def _remove_empty(d: Path) -> None:
    """Remove `d` and the cgroups under it that hold no process (leftovers)."""
    for child in d.iterdir():
        if child.is_dir():
            _remove_empty(child)
    if not CgroupHost._procs(d):
        with contextlib.suppress(OSError):
            d.rmdir()


@dataclass
class PluginCgroup:
    """A plugin's cgroup (`instance` None: no process in it; the shared CPU
    quota and the backstop) or one instance's leaf under it."""

    host: CgroupHost
    plugin_id: str
    oom_baseline: int = 0
    # The limits as the kernel held them when they were set (verify_limits):
    # status shows these rather than reading four files per plugin each time.
    read_back: dict[str, int] = field(default_factory=dict)
    instance: str | None = None

    @property
    def version(self) -> str:
        return self.host.version

    def dir(self, controller: str) -> Path:
        h = self.host.hierarchies[controller]
        return h.dir_of(self.host.rel(h, self.plugin_id, self.instance))

    def dirs(self) -> list[Path]:
        return [h.dir_of(self.host.rel(h, self.plugin_id, self.instance)) for h in self.host.distinct()]

    def expected_paths(self) -> dict[str, str]:
        """/proc/<pid>/cgroup field -> the path a member must show there
        (for the plugin cgroup: the path its instances' paths start with)."""
        return {h.line: self.host.rel(h, self.plugin_id, self.instance) for h in self.host.distinct()}

    # -- limits ---------------------------------------------------------------

    def set_limits(self, cpu_millicores: int | None, memory_bytes: int, pids: int) -> None:
        """Write the limits and read them back. `cpu_millicores` None: no CPU
        quota here (an instance leaf: its plugin's quota covers it)."""
        quota = max(MIN_QUOTA_US, cpu_millicores * CFS_PERIOD_US // 1000) if cpu_millicores is not None else None
        if self.version == "v2":
            d = self.dir("memory")
            _write(d / "memory.max", str(memory_bytes))
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", "0")
            if quota is not None:
                _write(d / "cpu.max", f"{quota} {CFS_PERIOD_US}")
            _write(d / "pids.max", str(pids))
        else:
            mem = self.dir("memory")
            limit, memsw = mem / "memory.limit_in_bytes", mem / "memory.memsw.limit_in_bytes"
            # memory+swap may never be set below memory: when a limit grows
            # (the plugin's backstop), memsw goes first; when it shrinks, last.
            order = [limit, memsw]
            if memsw.exists() and memory_bytes > int(_read(limit)):
                order.reverse()
            for path in order:
                if path is memsw:
                    if memsw.exists():
                        with contextlib.suppress(OSError):   # absent without swap accounting
                            _write(memsw, str(memory_bytes))
                else:
                    _write(path, str(memory_bytes))
            if quota is not None:
                cpu = self.dir("cpu")
                _write(cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US))
                _write(cpu / "cpu.cfs_quota_us", str(quota))
            _write(self.dir("pids") / "pids.max", str(pids))
        self.verify_limits(cpu_millicores, memory_bytes, pids)
        self.oom_baseline = self.oom_kills()

    def limits(self) -> dict[str, int]:
        """What the kernel holds (read back, not what we meant to write)."""
        if self.version == "v2":
            d = self.dir("memory")
            quota, period = _read(d / "cpu.max").split()
            return {"memory": int(_read(d / "memory.max")), "cpu_quota_us": int(quota) if quota != "max" else -1,
                    "cpu_period_us": int(period), "pids": int(_read(d / "pids.max"))}
        return {"memory": int(_read(self.dir("memory") / "memory.limit_in_bytes")),
                "cpu_quota_us": int(_read(self.dir("cpu") / "cpu.cfs_quota_us")),
                "cpu_period_us": int(_read(self.dir("cpu") / "cpu.cfs_period_us")),
                "pids": int(_read(self.dir("pids") / "pids.max"))}

    def verify_limits(self, cpu_millicores: int | None, memory_bytes: int, pids: int) -> None:
        got = self.limits()
        self.read_back = dict(got)
        # v1 rounds the memory limit down to a page.
        if not (0 < got["memory"] <= memory_bytes and got["memory"] > memory_bytes - 65536):
            raise CgroupError(f"memory limit reads back as {got['memory']}, wanted {memory_bytes}")
        if cpu_millicores is not None and got["cpu_quota_us"] <= 0:
            raise CgroupError("cpu quota reads back unlimited")
        if got["pids"] != pids:
            raise CgroupError(f"pids limit reads back as {got['pids']}, wanted {pids}")

    # -- membership -----------------------------------------------------------

    def procs(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs():
            found |= set(CgroupHost._procs(d))
        return found

    def membership_problems(self, pid: int) -> list[str]:
        """Why `pid` is not in every one of this plugin's cgroups (empty: it is)."""
        try:
            shown = _parse_proc_cgroup(Path(f"/proc/{pid}/cgroup").read_text())
        except OSError as exc:
            return [f"/proc/{pid}/cgroup: {exc.strerror}"]
        problems = []
        for line, rel in self.expected_paths().items():
            if shown.get(line) != rel:
                problems.append(f"{line or 'unified'}: in {shown.get(line)!r}, not {rel!r}")
        for d in self.dirs():
            if pid not in CgroupHost._procs(d):
                problems.append(f"{d}/cgroup.procs does not list {pid}")
        return problems

    # -- counters ---------------------------------------------------------------

    def oom_kills(self) -> int:
        try:
            if self.version == "v2":
                return _kv(_read(self.dir("memory") / "memory.events")).get("oom_kill", 0)
            return _kv(_read(self.dir("memory") / "memory.oom_control")).get("oom_kill", 0)
        except OSError:
            return 0

    def oom_killed_since_start(self) -> bool:
        return self.oom_kills() > self.oom_baseline

    def memory_bytes(self) -> int:
        name = "memory.current" if self.version == "v2" else "memory.usage_in_bytes"
        try:
            return int(_read(self.dir("memory") / name))
        except (OSError, ValueError):
            return 0

    def cpu_seconds(self) -> float | None:
        try:
            if self.version == "v2":
                return _kv(_read(self.dir("cpu") / "cpu.stat"))["usage_usec"] / 1e6
            if "cpuacct" in self.host.hierarchies:
                return int(_read(self.dir("cpuacct") / "cpuacct.usage")) / 1e9
        except (OSError, ValueError, KeyError):
            pass
        return None

    def cpu_stat(self) -> dict[str, int]:
        try:
            return _kv(_read(self.dir("cpu") / "cpu.stat"))
        except OSError:
            return {}

    def pids_refused(self) -> int:
        """How many forks/clones the pids limit refused (pids.events `max`,
        the same file in v1 and v2): the fork and thread bombs' counter."""
        try:
            return _kv(_read(self.dir("pids") / "pids.events")).get("max", 0)
        except OSError:
            return 0

    # -- teardown ---------------------------------------------------------------

    def kill_all(self) -> None:
        """SIGKILL every task, freezing first where the kernel lets us so a
        forking process cannot outrun the loop."""
        if self.version == "v2":
            kill = self.dir("memory") / "cgroup.kill"
            if kill.exists():
                with contextlib.suppress(OSError):
                    _write(kill, "1")
                return
            self._kill_loop()
            return
        freezer = self.dir("freezer") if "freezer" in self.host.hierarchies else None
        if freezer is not None and freezer.is_dir():
            with contextlib.suppress(OSError):
                _write(freezer / "freezer.state", "FROZEN")
                for _ in range(50):
                    if _read(freezer / "freezer.state").strip() == "FROZEN":
                        break
                    time.sleep(0.01)
        self._kill_loop()
        if freezer is not None and freezer.is_dir():
            with contextlib.suppress(OSError):
                _write(freezer / "freezer.state", "THAWED")

    def _kill_loop(self) -> None:
        for _ in range(20):
            pids = self.procs()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)

    def remove(self, timeout: float = 3.0) -> list[str]:
        """Kill what is left and remove the cgroups; the problems, if any.
        An instance removes its leaf only; the plugin cgroup, once its
        instances are gone, also the per-supervisor parent (v1) if empty."""
        problems = []
        if self.procs():
            self.kill_all()
        for d in self.dirs():
            deadline = time.monotonic() + timeout
            while d.is_dir():
                try:
                    d.rmdir()
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        problems.append(f"{d}: {exc.strerror}")
                        break
                    time.sleep(0.05)
        if self.version == "v1" and self.instance is None:
            for d in self.dirs():                   # the per-supervisor parent, once empty
                with contextlib.suppress(OSError):
                    d.parent.rmdir()
        return problems

    def remove_tree(self) -> list[str]:
        """The plugin cgroup and every instance leaf found under it (left by
        an earlier run): killed and removed."""
        names = {child.name[2:] for d in self.dirs() if d.is_dir()
                 for child in d.iterdir() if child.is_dir() and child.name.startswith("i-")}
        problems = []
        for name in sorted(names):
            problems += PluginCgroup(self.host, self.plugin_id, instance=name).remove()
        return problems + self.remove()
