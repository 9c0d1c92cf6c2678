"""Hot reload in the single-host runtime: replacing a running plugin.

When a plugin folder changes (manifest or code), the supervisor hands the old
and the new `PluginEntry` to `Rollouts.replace`, which picks one of three ways:

- **config only** (same code, same plan, only `config:` changed) and the
  running instance has a `reconfigure(config)` / `on_config_change(config)`
  method: the supervisor sends the new config on `precinct.config.<id>.<instance>`
  (exported by the plugin to platform only, so nobody else can send it) and
  the process keeps running. No hook, or the hook fails: rolling restart.
- **overlap** (the user's NATS permissions are unchanged, so both instances
  can share the creds file, and the confinement can hold two instances of
  one plugin): start the new version as a second instance in a second Slot,
  wait for its health ping, swap it into `supervisor.entries`, then stop the
  old one (SIGTERM -> shutdown() -> drain, so in-flight requests finish).
  Both instances sit in queue group `precinct.<id>`: each request goes to one.
  A plugin that may write its data dir (the kernel sandbox): the new
  instance starts with a read-only data dir and does not initialize (its
  runner waits, answering the ping); once the old one has drained and
  exited, the **flip**: the confinement remounts the new one's data dir
  read-write (`activate`) and the supervisor tells its runner
  (`{"data": "rw"}` on `precinct.config.<id>.<instance>`), which then
  initializes the plugin and subscribes. Its gap is the old one's drain plus
  the new one's initialize(); the dispatcher retries what finds no responder
  meanwhile. If the flip fails, the new instance is restarted alone (the
  handover's way); if the new version fails in initialize(), the old one is
  started again from its snapshot.
- **handover** (the grants changed, or the confinement cannot hold both
  instances, e.g. the kernel sandbox when the data image must be grown: it
  is resized only while nobody has it mounted; the reason is in the
  rollout's record and log): a new user JWT revokes the old one, which would cut the old instance off
  mid-request. So the old instance is stopped first (drained: its in-flight
  requests are answered), then identity is synced, then the new one starts.
  Commands sent in the gap find no responder; the dispatcher retries a
  no-responders request until the new instance subscribes
  (services/dispatcher.py, `--no-responders-retry`), so they are delayed,
  not lost, and never answered twice.

If the new version never becomes ready (crash, ready timeout, refused launch)
it is stopped and the old one keeps (or goes back to) running; the old slot
gets `LatestRevisionReady=False` with reason `RolledBack` while its `Ready`
stays True. That folder digest is remembered, so the broken version is not
retried on every scan; the next edit of the folder tries again.

`Rollouts` reaches the supervisor only through `FleetHost`, the few
attributes and methods listed there.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .. import conditions as cond
from ..wire import subjects as wire
from ..spec.load import find_manifest
from ..confine.launch import Confinement
from .slot import CRASH_LOOP, RUNNING, SUSPENDED, RestartPolicy, Slot

if TYPE_CHECKING:  # pragma: no cover
    from ..natsauth.identity import Identity
    from .supervisor import PluginEntry

log = logging.getLogger("precinct.rollout")

MAX_FILES = 2000                       # a folder with more files is fingerprinted by its first 2000
MAX_HASHED_BYTES = 8 * 1024 * 1024     # bigger files count by size and mtime, not content
SKIP_DIRS = frozenset({".deps", "__pycache__", ".git", ".venv", "node_modules"})
CONFIG_TIMEOUT = 5.0


# -- what changed in a folder ----------------------------------------------------

def code_files(folder: Path) -> list[Path]:
    """The plugin's files, bounded: no .deps/ or __pycache__, no symlinks,
    at most MAX_FILES, in a stable order."""
    out: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not os.path.islink(os.path.join(root, d)))
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")):
                continue
            path = Path(root) / name
            if path.is_symlink():
                continue
            out.append(path)
            if len(out) >= MAX_FILES:
                return out
    return out


def folder_fingerprint(folder: Path) -> tuple:
    """Cheap (stat only): relative path, mtime and size of every file."""
    out = []
    for path in code_files(folder):
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((str(path.relative_to(folder)), st.st_mtime_ns, st.st_size))
    return tuple(out)


def folder_digest(folder: Path) -> str:
    """`<manifest sha256>:<code sha256>`: the manifest part alone tells a
    config-only edit from a code edit."""
    manifest = find_manifest(folder)
    head = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest else ""
    code = hashlib.sha256()
    for path in code_files(folder):
        if manifest is not None and path == manifest:
            continue
        try:
            st = path.stat()
            code.update(str(path.relative_to(folder)).encode() + b"\0")
            if st.st_size <= MAX_HASHED_BYTES:
                code.update(hashlib.sha256(path.read_bytes()).digest())
            else:
                code.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        except OSError:
            continue
    return f"{head}:{code.hexdigest()}"


def _copy_or_link(src: str, dst: str) -> str:
    try:
        if os.path.getsize(src) > 1024 * 1024:
            os.link(src, dst)
            return dst
    except OSError:
        pass
    return shutil.copy2(src, dst)


def _code_part(digest: str) -> str:
    return digest.partition(":")[2]


def _spec_without_config(entry: "PluginEntry") -> dict:
    data = entry.plugin.spec.model_dump(mode="json")
    data.pop("config", None)
    return data


def config_only(old: "PluginEntry", new: "PluginEntry") -> bool:
    return (old.folder == new.folder and _code_part(old.digest) == _code_part(new.digest)
            and old.plan.to_dict() == new.plan.to_dict()
            and _spec_without_config(old) == _spec_without_config(new))


def same_user(old: "PluginEntry", new: "PluginEntry") -> bool:
    """Same user claims (what user_claims() signs) -> same user JWT -> a sync
    revokes nothing, so both instances can share the creds file."""
    a, b = old.plan.account, new.plan.account
    return (a.user, a.max_subscriptions, a.max_payload) == (b.user, b.max_subscriptions, b.max_payload)


# -- the rollout -----------------------------------------------------------------

@runtime_checkable
class FleetHost(Protocol):
    """What a rollout needs from the supervisor (runtime/supervisor.py), and nothing more."""

    state_dir: Path                        # rollback snapshots live in <state dir>/rollout
    entries: dict[str, "PluginEntry"]      # plugin id -> the version that runs; a rollout swaps it
    routes: dict[str, dict]                # chat word -> route; rebuilt when a rollout is undone
    identity: "Identity"                   # sync(plans): NATS accounts and users for the plans
    policy: RestartPolicy                  # ready timeout and grace period: how long to wait
    confinement: Confinement               # how many instances of one plugin it can hold

    def publish_fleet(self) -> None:
        """Write routes.json and fleet.json and tell the trusted services."""

    async def request(self, subject: str, payload: bytes, timeout: float) -> bytes:
        """A NATS request as the platform user; the reply's data."""

    def stopping(self) -> bool:
        """True once the supervisor is shutting down."""


class Rollouts:
    def __init__(self, sup: FleetHost) -> None:
        self.sup = sup
        self.failed: dict[str, str] = {}       # plugin id -> folder digest that did not become ready
        self.history: list[dict] = []          # one record per replace(), newest last (bounded)
        # Monotonic outcome counts per plugin, for precinct_plugin_reloads_total.
        self.outcomes: dict[str, dict[str, int]] = {}
        # Plugins whose new version answers and serves while the reload finishes
        # (the old instance draining): status counts that revision already.
        self._took_over: set[str] = set()

    # snapshots: the old code for a handover rollback ------------------------------

    def _snapshot_root(self) -> Path:
        return self.sup.state_dir / "rollout"

    def is_snapshot(self, folder: Path) -> bool:
        return Path(folder).is_relative_to(self._snapshot_root())

    def snapshot(self, pid: str, folder: Path, digest: str) -> None:
        """Copy a version's folder when it is accepted, so a handover (which
        stops the old instance before the new one is ready) can start the old
        code again if the new version fails, even after an in-place edit.
        Small files are copied; big ones (wheels in .deps/) hard-linked."""
        if self.is_snapshot(folder):
            return
        root = self._snapshot_root() / pid
        dest = root / digest.replace(":", "-")[:40]
        if dest.exists():
            return
        tmp = root / f".{dest.name}.tmp"
        try:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(folder, tmp, symlinks=True, copy_function=_copy_or_link,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            tmp.replace(dest)
        except OSError as exc:
            log.warning("plugin %s: no rollback snapshot of %s: %s", pid, folder, exc)
            shutil.rmtree(tmp, ignore_errors=True)

    def snapshot_of(self, pid: str, digest: str) -> Path | None:
        dest = self._snapshot_root() / pid / digest.replace(":", "-")[:40]
        return dest if dest.is_dir() else None

    def prune(self, pid: str, keep: set[str]) -> None:
        root = self._snapshot_root() / pid
        names = {d.replace(":", "-")[:40] for d in keep}
        if root.is_dir():
            for child in root.iterdir():
                if child.name not in names:
                    shutil.rmtree(child, ignore_errors=True)

    def forget(self, pid: str) -> None:
        shutil.rmtree(self._snapshot_root() / pid, ignore_errors=True)
        self.failed.pop(pid, None)

    def overlap_ok(self, old: "PluginEntry", new: "PluginEntry") -> bool:
        return self.overlap_problem(old, new) is None

    def overlap_problem(self, old: "PluginEntry", new: "PluginEntry") -> str | None:
        """Why the new version cannot run beside the old one (None: it can).
        The confinement says how many instances of one plugin it holds
        (`instances_per_plugin`; 1 for one with per-plugin state that does
        not say) and whether these two plans may overlap (`overlap_problem`,
        else `can_overlap`: the kernel sandbox refuses when the data image
        would have to be grown)."""
        conf = self.sup.confinement
        n = getattr(conf, "instances_per_plugin", None)
        if n is None:
            n = 1 if hasattr(conf, "set_plan") else 2
        if n < 2:
            return "the sandbox holds one instance of a plugin at a time"
        explain = getattr(conf, "overlap_problem", None)
        if explain is not None:
            return explain(old.plan, new.plan)
        return None if conf.can_overlap(old.plan, new.plan) else "the sandbox cannot run both versions at once"

    def _record(self, pid: str, mode: str, ok: bool, started: float, reason: str = "") -> None:
        self.history.append({"plugin": pid, "mode": mode, "ok": ok, "reason": reason,
                             "seconds": round(time.monotonic() - started, 3), "at": time.time()})
        del self.history[:-200]
        # A failed reload always leaves the previous version serving (or restarted).
        self._took_over.discard(pid)
        outcome = "succeeded" if ok else "rolled_back"
        counts = self.outcomes.setdefault(pid, {})
        counts[outcome] = counts.get(outcome, 0) + 1

    def revision(self, pid: str) -> int:
        """Which accepted version of `pid` this supervisor runs: 1 at start,
        +1 for every reload that took over (code or config), as a cluster's
        `status.revision` counts applied spec changes. A rolled-back reload
        does not count: the previous revision keeps serving."""
        return 1 + self.outcomes.get(pid, {}).get("succeeded", 0) + (pid in self._took_over)

    async def replace(self, old: "PluginEntry", new: "PluginEntry", plans: list) -> None:
        pid = new.plugin.id
        started = time.monotonic()
        if config_only(old, new) and old.slot.status.state == RUNNING:
            if await self._reconfigure(old, new):
                self._record(pid, "config", True, started)
                return
            log.info("plugin %s has no working reconfigure(); restarting it with the new config", pid)
        problem = (None if same_user(old, new) else "the NATS permissions changed (a new user JWT revokes the "
                   "old one's)") or self.overlap_problem(old, new)
        if problem is None:
            ok, why = await self._overlap(old, new, plans)
            mode = "overlap"
        else:
            ok, why = await self._handover(old, new, plans, problem)
            mode = "handover"
        self._record(pid, mode, ok, started, why)

    # config only ---------------------------------------------------------------

    async def _reconfigure(self, old: "PluginEntry", new: "PluginEntry") -> bool:
        sup, pid = self.sup, new.plugin.id
        instance = old.slot.status.instance
        if not instance:
            return False
        body = json.dumps({"config": new.plugin.spec.config}).encode()
        try:
            answer = json.loads(await sup.request(wire.config(pid, instance), body, CONFIG_TIMEOUT))
        except Exception as exc:  # no hook subscription (old runner), timeout, garbage
            log.info("plugin %s: config reload not answered (%r)", pid, exc)
            return False
        if not answer.get("ok"):
            log.info("plugin %s: config reload refused: %s", pid, answer.get("error"))
            return False
        from .supervisor import PluginEntry

        run_dir = sup.state_dir / "plugins" / pid
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(new.plugin.spec.config))  # a later restart sees it
        sup.entries[pid] = PluginEntry(new.folder, new.plugin, new.plan, new.digest, old.slot)
        old.slot.conditions.set(cond.LATEST_REVISION_READY, True, "ConfigReloaded",
                                f"config reloaded in instance {instance} without a restart")
        sup.publish_fleet()
        self.failed.pop(pid, None)
        self.prune(pid, {new.digest})
        log.info("plugin %s: config reloaded without a restart", pid)
        return True

    # two instances side by side ---------------------------------------------------

    async def _overlap(self, old: "PluginEntry", new: "PluginEntry", plans: list) -> tuple[bool, str]:
        sup, pid = self.sup, new.plugin.id
        await sup.identity.sync(plans)         # adds edges; same user JWT, so nothing is revoked
        sup.entries[pid] = new                 # the launcher reads the entry it starts
        sup.publish_fleet()
        log.info("plugin %s: starting the new version beside the old one", pid)
        new.slot.start()
        ok, why = await self._wait_ready(new.slot)
        if ok:
            new.slot.conditions.set(cond.LATEST_REVISION_READY, True, "Ready",
                                    "the latest version answers its health ping")
            self._took_over.add(pid)
            await old.slot.stop()              # SIGTERM -> shutdown() -> drain
            flipped, why = await self._flip(old, new, plans)
            if not flipped:
                return False, why
            self.failed.pop(pid, None)
            self.prune(pid, {new.digest})
            log.info("plugin %s: switched to the new version; old instance drained%s", pid, why and f" ({why})")
            return True, why
        await new.slot.stop()
        sup.entries[pid] = old
        await self._restore_claims(plans, old)
        self._mark_rolled_back(old, new, why)
        return False, why

    async def _flip(self, old: "PluginEntry", new: "PluginEntry", plans: list) -> tuple[bool, str]:
        """After the old instance has exited: give a new instance that waits
        for its data dir (confinement `data_pending`) the read-write data dir
        and let its runner initialize the plugin. (True, "") when nothing
        was pending or it serves now; (True, why) when the flip failed but
        the new version, restarted alone, serves; (False, why) when the new
        version failed and the old one runs again."""
        sup, pid = self.sup, new.plugin.id
        conf = sup.confinement
        instance = new.slot.status.instance
        pending = getattr(conf, "data_pending", None)
        if pending is None or not pending(pid, instance):
            return True, ""
        why = await conf.activate(pid, instance)
        if why is None:
            timeout = CONFIG_TIMEOUT + sup.policy.ready_timeout
            try:
                answer = json.loads(await sup.request(wire.config(pid, instance), json.dumps({"data": "rw"}).encode(),
                                                      timeout))
            except Exception as exc:  # the runner died in initialize(), or never answered
                answer = {"ok": False, "error": f"no answer from the new instance ({type(exc).__name__})",
                          "gone": True}
            if answer.get("ok"):
                log.info("plugin %s: data dir switched to the new instance %s (read-write); it serves now",
                         pid, instance)
                return True, ""
            # Its own code failed with the data dir writable: roll back, as a handover does.
            why = f"the new version failed after the switch-over: {answer.get('error') or 'no reason given'}"
            log.warning("plugin %s: %s", pid, why)
            await new.slot.stop()
            ok, _ = await self._roll_back(old, new, plans, why)
            return False, why
        # The remount could not be done: the new instance is restarted alone (nothing else holds the data).
        why = f"data dir flip failed ({why}); restarted the new instance alone"
        log.warning("plugin %s: %s", pid, why)
        await new.slot.stop()
        new.slot.start()
        ok, failed = await self._wait_ready(new.slot)
        if ok:
            return True, why
        await new.slot.stop()
        await self._roll_back(old, new, plans, failed)
        return False, failed

    # one after the other ------------------------------------------------------------

    async def _handover(self, old: "PluginEntry", new: "PluginEntry", plans: list,
                        reason: str = "") -> tuple[bool, str]:
        sup, pid = self.sup, new.plugin.id
        log.info("plugin %s: handing over (old drained first, then the new version starts)%s", pid,
                 f": {reason}" if reason else "")
        await old.slot.stop()                  # drained before its user JWT is revoked
        await sup.identity.sync(plans)
        sup.entries[pid] = new
        sup.publish_fleet()
        new.slot.start()
        ok, why = await self._wait_ready(new.slot)
        if ok:
            new.slot.conditions.set(cond.LATEST_REVISION_READY, True, "Ready",
                                    "the latest version answers its health ping")
            self.failed.pop(pid, None)
            self.prune(pid, {new.digest})
            return True, reason
        await new.slot.stop()
        await self._roll_back(old, new, plans, why)
        return False, why

    async def _roll_back(self, old: "PluginEntry", new: "PluginEntry", plans: list, why: str) -> bool:
        """The old instance has stopped and the new version failed: run the old one again."""
        sup, pid = self.sup, new.plugin.id
        from .supervisor import PluginEntry

        # The folder now holds the new (broken) code: start the old one from its snapshot.
        snap = self.snapshot_of(pid, old.digest) if not self.is_snapshot(old.folder) else old.folder
        if snap is not None:
            old = PluginEntry(snap, old.plugin, old.plan, old.digest, old.slot)
        sup.entries[pid] = old
        await self._restore_claims(plans, old)
        old.slot.start()
        ok, _ = await self._wait_ready(old.slot)       # the old version back before status says so
        self._mark_rolled_back(old, new, why)
        return ok

    # helpers --------------------------------------------------------------------------

    async def _wait_ready(self, slot: Slot) -> tuple[bool, str]:
        policy = self.sup.policy
        restarts = slot.status.restarts
        deadline = time.monotonic() + policy.ready_timeout + policy.grace_period + 10
        await asyncio.sleep(0.05)
        while time.monotonic() < deadline:
            if slot.status.state == RUNNING:
                return True, ""
            if slot.status.restarts > restarts or slot.status.state in (CRASH_LOOP, SUSPENDED):
                break
            if self.sup.stopping():
                return False, "the supervisor is stopping"
            await asyncio.sleep(0.05)
        tail = list(slot.log.tail)[-1:]
        why = slot.status.last_exit or "NotReady"
        if tail:
            why = f"{why}: {tail[0]}"
        return False, why[:500]

    async def _restore_claims(self, plans: list, old: "PluginEntry") -> None:
        """Put the old version's plan and routes back."""
        sup = self.sup
        restored = [old.plan if p.id == old.plugin.id else p for p in plans]
        await sup.identity.sync(restored)
        self.reroute()
        sup.publish_fleet()

    def reroute(self) -> None:
        """Routes (chat word -> subject, owner) from the versions in `entries`."""
        from ..spec.ownership import resolve

        ownership = resolve([e.plugin for e in self.sup.entries.values()])
        self.sup.routes = ownership.routes()

    def _mark_rolled_back(self, old: "PluginEntry", new: "PluginEntry", why: str) -> None:
        pid = new.plugin.id
        self.failed[pid] = new.digest
        self.prune(pid, {old.digest})
        version = getattr(new.plugin.spec, "version", "") or "?"
        old.slot.conditions.set(
            cond.LATEST_REVISION_READY, False, cond.ROLLED_BACK,
            f"version {version} from {new.folder} never became ready ({why}); the previous version keeps running")
        log.warning("plugin %s: new version not ready (%s); rolled back", pid, why)
