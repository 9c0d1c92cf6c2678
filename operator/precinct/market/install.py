"""Install, update, roll back and remove plugins in a single-host plugins dir.

Every operation is one atomic change to the live folder `<plugins-dir>/<id>`:

1. take the installer lock (`<plugins-dir>/.precinct/lock`);
2. stage: fetch and verify the bundle (TUF for NAME, a publisher signature
   for FILE/URL), extract it safely into `<plugins-dir>/.precinct/staging/`
   (same filesystem, invisible to the supervisor: it only looks at folders
   holding a plugin.yaml directly under the plugins dir), validate the
   manifest and its claims against the plugins already there, scan it, and
   install its wheels into the staged folder's own `.deps/` with pip
   (`--no-index --no-deps --only-binary=:all: --require-hashes --target`:
   wheels are unpacked, never built, so no plugin code runs at install);
3. swap: exchange the staged and live folders with one `renameat2(...,
   RENAME_EXCHANGE)` (two renames where the kernel lacks it), so the running
   supervisor sees the old version or the new one, never a mix. The old
   folder moves to `<plugins-dir>/.precinct/versions/<id>/<version>/` for
   `rollback`.

Any failure before step 3 deletes the staging folder and changes nothing.

The runner finds the dependencies because it appends `<plugin-dir>/.deps`
to `sys.path` before importing the plugin (precinct_runner.loader): after its
own packages, so the runner's nats-py always wins. `precinct up` installs
nothing more for a folder that has `.deps/` (runtime/plugin_deps.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import secrets
import shutil
import subprocess  # nosec B404 - runs pip, a trusted program, with fixed arguments
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from ..spec.load import find_manifest, load_path
from ..spec.model import Manifest
from ..wire.kubernetes import API_GROUP, API_VERSION, BUNDLE_SHA256, KIND, PUBLISHER_KEYID
from ..wire.kubernetes import INDEX as INDEX_ANNOTATION
from ..spec.ownership import Plugin, resolve
from . import bundle as bundle_mod
from . import keys as keys_mod
from .client import open_index
from ..plan.permission_diff import PermissionDiff, diff as permission_diff
from .errors import InstallError, PermissionsNotAccepted, TrustError
from .index import _version_key
from .scan import Policy, ScanReport, scan_folder

# Asked when a new version may do more than the installed one (the diff lists
# what); True applies it. None: nobody can be asked, so such a change is refused.
Consent = Callable[[PermissionDiff], bool]
# Told each step as it starts, in words (the marketplace page shows them).
Progress = Callable[[str], None]

CONTROL = ".precinct"
DEPS = ".deps"
RENAME_EXCHANGE = 2
AT_FDCWD = -100


@dataclass
class Trust:
    """How a FILE or URL source is trusted (NAME sources are verified by TUF)."""

    index_url: str | None = None
    root: Path | None = None
    publisher_keys: list[Path] = field(default_factory=list)
    signature: Path | None = None
    allow_unsigned: bool = False
    index_only: bool = False          # the source is a NAME in the index, whatever files lie around (the page)


@dataclass
class Outcome:
    action: str
    id: str
    version: str
    previous: str | None
    folder: Path
    source: str
    scan: ScanReport | None = None
    notes: list[str] = field(default_factory=list)
    permissions: PermissionDiff | None = None     # update and rollback: what changed in what it may do

    def to_dict(self, policy: Policy | None = None) -> dict[str, Any]:
        out = {"action": self.action, "id": self.id, "version": self.version, "previous": self.previous,
               "folder": str(self.folder), "source": self.source, "notes": self.notes}
        if self.scan is not None and policy is not None:
            out["scan"] = self.scan.to_dict(policy)
        if self.permissions is not None:
            out["permissions"] = self.permissions.to_dict()
        return out


# -- the plugins dir's control area ------------------------------------------------


class PluginsDir:
    def __init__(self, plugins_dir: Path, state_dir: Path) -> None:
        self.root = plugins_dir.resolve()
        self.state_dir = state_dir
        self.control = self.root / CONTROL

    def _mk(self, *parts: str) -> Path:
        path = self.control.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True, mode=0o755)
        return path

    @contextlib.contextmanager
    def locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        self._mk()
        with open(self.control / "lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InstallError(f"another install is running on {self.root}", "lock") from None
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def staging(self, plugin_hint: str) -> Path:
        return self._mk("staging") / f"{plugin_hint}-{secrets.token_hex(4)}"

    def versions(self, plugin_id: str) -> Path:
        return self.control / "versions" / plugin_id

    def record_path(self, plugin_id: str) -> Path:
        return self.control / "installed" / f"{plugin_id}.json"

    def record(self, plugin_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.record_path(plugin_id).read_text())
        except (OSError, ValueError):
            return None

    def write_record(self, plugin_id: str, record: dict[str, Any]) -> None:
        self._mk("installed")
        tmp = self.record_path(plugin_id).with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        tmp.replace(self.record_path(plugin_id))

    def live_folder(self, plugin_id: str) -> Path | None:
        """The folder currently holding plugin `plugin_id` (its name may differ from the id)."""
        direct = self.root / plugin_id
        if direct.is_dir() and find_manifest(direct):
            return direct
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if find_manifest(folder):
                loaded, _ = load_path(folder)
                if isinstance(loaded, Manifest) and loaded.id == plugin_id:
                    return folder
        return None

    def others(self, plugin_id: str) -> list[Plugin]:
        out = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if find_manifest(folder):
                loaded, _ = load_path(folder)
                if isinstance(loaded, Manifest) and loaded.id != plugin_id:
                    out.append(Plugin(loaded.id, loaded.without_name()))
        return out


def _exchange(a: Path, b: Path) -> None:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        fn = None
    if fn is not None:
        if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(a))
    # Fallback: two renames; for an instant neither version is present.
    aside = a.with_name(a.name + ".swap")
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)


# -- sources ----------------------------------------------------------------------------


@dataclass
class Fetched:
    path: Path
    source: str
    sha256: str
    publisher: str | None
    index_url: str | None = None


def _download(url: str, dest: Path) -> None:
    if not url.startswith(("https://", "http://")):
        raise InstallError(f"{url}: only http(s) URLs are fetched", "source")
    with urllib.request.urlopen(url, timeout=60) as resp, dest.open("wb") as out:  # nosec B310 - scheme checked
        total = 0
        while chunk := resp.read(1 << 16):
            total += len(chunk)
            if total > bundle_mod.MAX_BUNDLE_BYTES:
                raise InstallError(f"{url}: larger than {bundle_mod.MAX_BUNDLE_BYTES:,} bytes", "size")
            out.write(chunk)


def _check_signature(path: Path, trust: Trust, sig_path: Path | None) -> str | None:
    info_sha = bundle_mod.sha256_file(path)
    if sig_path is None or not sig_path.is_file():
        if trust.allow_unsigned:
            return None
        raise TrustError(f"{path.name} has no publisher signature ({path.name}.sig); install it by NAME from a "
                         "trusted index, sign it with `precinct plugin sign`, or pass --allow-unsigned", "signature")
    if not trust.publisher_keys:
        raise TrustError("a signed bundle needs --publisher-key PUB to check the signature against", "signature")
    try:
        doc = json.loads(sig_path.read_text())
    except (OSError, ValueError) as exc:
        raise TrustError(f"{sig_path}: unreadable signature ({exc})", "signature") from None
    info = bundle_mod.inspect(path)
    trusted = [keys_mod.load_public(p) for p in trust.publisher_keys]
    key = keys_mod.verify_bundle_signature(doc, trusted, info.id, info.version, info_sha)
    return key.keyid


def fetch_source(source: str, state_dir: Path, trust: Trust, work: Path, version: str | None = None) -> Fetched:
    """NAME (from the index, TUF-verified), FILE or URL (publisher signature)."""
    if source.startswith(("http://", "https://")) and not trust.index_only:
        work.mkdir(parents=True, exist_ok=True)
        dest = work / "download.roseyplug"
        _download(source, dest)
        sig = None
        if not trust.allow_unsigned or trust.publisher_keys:
            sig = work / "download.roseyplug.sig"
            try:
                _download(source + ".sig", sig)
            except Exception:
                sig = None
        publisher = _check_signature(dest, trust, sig)
        return Fetched(dest, source, bundle_mod.sha256_file(dest), publisher)
    path = Path(source)
    if not trust.index_only and (path.is_file() or source.endswith(bundle_mod.SUFFIX) or "/" in source):
        if not path.is_file():
            raise InstallError(f"{source}: no such file", "source")
        sig = trust.signature or path.with_name(path.name + ".sig")
        publisher = _check_signature(path, trust, sig)
        return Fetched(path, str(path), bundle_mod.sha256_file(path), publisher)
    client = open_index(state_dir, trust.index_url, trust.root)
    release = client.fetch(source, version)
    return Fetched(release.path, f"{client.url} {release.id} {release.version}", release.sha256, release.publisher,
                   client.url)


# -- staging ---------------------------------------------------------------------------------


def install_wheels(folder: Path, python: str | None = None) -> list[str]:
    """Unpack the bundle's wheels into folder/.deps (hash-checked, offline)."""
    lock = folder / "wheels" / "requirements.lock"
    if not lock.is_file():
        return []
    argv = [python or sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--only-binary=:all:",
            "--require-hashes", "--no-compile", "--disable-pip-version-check", "--no-warn-script-location",
            "--isolated", "--target", str(folder / DEPS), "--find-links", str(folder / "wheels"), "-r", str(lock)]
    import tempfile

    with tempfile.TemporaryDirectory(prefix="precinct-pip-") as home:
        # A throwaway HOME: pip (and anything it touches) must not write into the plugin folder.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PIP_CONFIG_FILE": os.devnull,
               "PYTHONNOUSERSITE": "1", "HOME": home, "PIP_CACHE_DIR": str(Path(home) / "cache")}
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)  # nosec B603
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise InstallError("installing the bundle's wheels failed: " + " | ".join(tail), "dependencies")
    return [line for line in lock.read_text().splitlines() if line and not line.startswith("#")]


def _stage(fetched: Fetched, pdir: PluginsDir, policy: Policy, hint: str,
           progress: Progress) -> tuple[Path, bundle_mod.BundleInfo, ScanReport]:
    stage = pdir.staging(hint)
    try:
        progress("unpacking the bundle and checking every file against its manifest")
        info = bundle_mod.extract(fetched.path, stage)
        if info.sha256 != fetched.sha256:
            raise TrustError(f"{fetched.path} changed while it was being installed", "hash")
        owned = resolve(pdir.others(info.id) + [Plugin(info.id, info.manifest.without_name())])
        for rejection in owned.rejected:
            if rejection.plugin == info.id:
                raise InstallError(f"{info.id} cannot run next to the installed plugins: {rejection.reason}: "
                                   f"{rejection.message}", "conflict")
        progress("scanning the code")
        report = scan_folder(stage, info.manifest)
        report.enforce(policy)
        progress("unpacking its wheels (hash-checked, offline)")
        install_wheels(stage)
        return stage, info, report
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _swap_in(pdir: PluginsDir, stage: Path, plugin_id: str, live: Path | None, old_version: str | None) -> Path:
    """Make `stage` the live folder; file the old one under versions/. Returns the live path."""
    target = live or pdir.root / plugin_id
    if live is None:
        if target.exists():
            raise InstallError(f"{target} exists but holds no plugin; move it away first", "conflict")
        os.rename(stage, target)
        return target
    _exchange(stage, target)                       # the one change the supervisor sees
    keep = pdir.versions(plugin_id) / (old_version or f"unknown-{int(time.time())}")
    keep.parent.mkdir(parents=True, exist_ok=True)
    if keep.exists():
        shutil.rmtree(stage, ignore_errors=True)   # that version is already kept
    else:
        os.rename(stage, keep)
    return target


def _version_of(folder: Path) -> str | None:
    manifest = _manifest_of(folder)
    return manifest.version if manifest else None


def _manifest_of(folder: Path) -> Manifest | None:
    loaded, _ = load_path(folder)
    return loaded if isinstance(loaded, Manifest) else None


def _quiet(_step: str) -> None:
    pass


def check_consent(old: Manifest | None, new: Manifest, consent: Consent | None, what: str) -> PermissionDiff:
    """The permission diff from the live version to `new`; raises
    PermissionsNotAccepted when it widens and `consent` does not say yes.
    `precinct plugin update`/`rollback` and the marketplace page all pass here."""
    change = permission_diff(old, new)
    if change.needs_consent and (consent is None or not consent(change)):
        raise PermissionsNotAccepted(
            f"{new.id} {new.version} may do more than the installed {old.version if old else 'version'} "
            f"({len(change.widening)} change(s)); the {what} was not applied. Accept them with --accept-permissions "
            "(or answer yes when asked in a terminal, or accept them on the marketplace page)", change)
    return change


# -- operations --------------------------------------------------------------------------------


def install(source: str, plugins_dir: Path, state_dir: Path, trust: Trust, policy: Policy | None = None,
            version: str | None = None, update: bool = False, allow_downgrade: bool = False,
            consent: Consent | None = None, progress: Progress | None = None) -> Outcome:
    """Install (or with `update`, replace) a plugin. An update whose version may
    do more than the installed one is applied only if `consent` accepts its
    permission diff."""
    policy = policy or Policy()
    progress = progress or _quiet
    pdir = PluginsDir(plugins_dir, state_dir)
    with pdir.locked():
        work = pdir.staging("fetch")
        try:
            progress(f"fetching and verifying {source}" + (f" {version}" if version else ""))
            fetched = fetch_source(source, state_dir, trust, work, version)
            peek = bundle_mod.inspect(fetched.path)
            live = pdir.live_folder(peek.id)
            previous = _version_of(live) if live else None
            if live is not None and not update:
                raise InstallError(f"{peek.id} {previous} is already installed in {live}; use `precinct plugin "
                                   "update`", "installed")
            if update and live is None:
                raise InstallError(f"{peek.id} is not installed; use `precinct plugin install`", "installed")
            if previous == peek.version:
                return Outcome("unchanged", peek.id, peek.version, previous, live, fetched.source,
                               notes=[f"{peek.id} {previous} is already installed"])
            if previous and _version_key(peek.version) < _version_key(previous) and not allow_downgrade:
                raise InstallError(f"{peek.id} {peek.version} is older than the installed {previous}; use "
                                   "`precinct plugin rollback` (or --allow-downgrade)", "downgrade")
            permissions = None
            if live is not None:
                progress("comparing its permissions with the installed version")
                permissions = check_consent(_manifest_of(live), peek.manifest, consent, "update")
            stage, info, report = _stage(fetched, pdir, policy, peek.id, progress)
            progress("swapping the new version in")
            folder = _swap_in(pdir, stage, info.id, live, previous)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        record = pdir.record(info.id) or {"id": info.id, "history": []}
        record.update({"version": info.version, "folder": folder.name, "source": fetched.source,
                       "sha256": fetched.sha256, "publisher": fetched.publisher, "index": fetched.index_url,
                       "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        record["history"] = [v for v in record.get("history", []) if v != info.version] + [info.version]
        pdir.write_record(info.id, record)
        return Outcome("updated" if previous else "installed", info.id, info.version, previous, folder,
                       fetched.source, report, permissions=permissions)


def rollback(plugin_id: str, plugins_dir: Path, state_dir: Path, to_version: str | None = None,
             policy: Policy | None = None, consent: Consent | None = None,
             progress: Progress | None = None) -> Outcome:
    """Swap the previous kept version back in (checked against its own file
    manifest first). A kept version that may do more than the live one needs
    `consent`, as an update does."""
    progress = progress or _quiet
    pdir = PluginsDir(plugins_dir, state_dir)
    with pdir.locked():
        live = pdir.live_folder(plugin_id)
        if live is None:
            raise InstallError(f"{plugin_id} is not installed", "installed")
        current = _version_of(live)
        kept = sorted((p.name for p in pdir.versions(plugin_id).glob("*") if p.is_dir() and p.name != current),
                      key=_version_key) if pdir.versions(plugin_id).is_dir() else []
        record = pdir.record(plugin_id) or {"id": plugin_id, "history": []}
        history = [v for v in record.get("history", []) if v != current]
        if to_version is None:
            candidates = [v for v in reversed(history) if v in kept] or kept[::-1]
            if not candidates:
                raise InstallError(f"no earlier version of {plugin_id} is kept under {pdir.versions(plugin_id)}",
                                   "rollback")
            to_version = candidates[0]
        elif to_version not in kept:
            raise InstallError(f"{plugin_id} {to_version} is not kept (kept: {', '.join(kept) or 'none'})", "rollback")
        stage = pdir.staging(plugin_id)
        try:
            progress(f"copying the kept {plugin_id} {to_version}")
            shutil.copytree(pdir.versions(plugin_id) / to_version, stage, symlinks=True)
            # A fresh mtime, so the supervisor's cheap change check (manifest mtime, size) sees the swap.
            os.utime(stage / "plugin.yaml")
            problems = bundle_mod.verify_tree(stage)
            if problems:
                raise InstallError(f"kept copy of {plugin_id} {to_version} was modified: {'; '.join(problems[:5])}",
                                   "files")
            kept_manifest = _manifest_of(stage)
            if kept_manifest is None:
                raise InstallError(f"kept copy of {plugin_id} {to_version} has no valid manifest", "manifest")
            progress("comparing its permissions with the installed version")
            permissions = check_consent(_manifest_of(live), kept_manifest, consent, "rollback")
            progress("scanning the code")
            report = scan_folder(stage)
            report.enforce(policy or Policy(allow_warnings=True))
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        progress("swapping the kept version in")
        folder = _swap_in(pdir, stage, plugin_id, live, current)
        shutil.rmtree(pdir.versions(plugin_id) / to_version, ignore_errors=True)   # it is live now
        record.update({"version": to_version, "folder": folder.name, "rolled_back_from": current,
                       "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        record["history"] = [v for v in history if v != to_version] + [to_version]
        if current:
            record["history"] = [v for v in record["history"] if v != current]
        pdir.write_record(plugin_id, record)
        return Outcome("rolled-back", plugin_id, to_version, current, folder, f"{CONTROL}/versions", report,
                       permissions=permissions)


def data_paths(state_dir: Path, plugin_id: str) -> list[Path]:
    """What --purge deletes: the plugin's storage database and data dir."""
    storage = state_dir / "storage"
    return [storage / f"{plugin_id}.db", storage / f"{plugin_id}.db-wal", storage / f"{plugin_id}.db-shm",
            state_dir / "plugins" / plugin_id / "data"]


def remove(plugin_id: str, plugins_dir: Path, state_dir: Path, purge: bool = False,
           progress: Progress | None = None) -> Outcome:
    """Take the folder away in one rename, then delete it, its kept versions and its record.
    The running supervisor stops the plugin and revokes its NATS account and
    cgroups when the folder disappears."""
    progress = progress or _quiet
    pdir = PluginsDir(plugins_dir, state_dir)
    with pdir.locked():
        live = pdir.live_folder(plugin_id)
        if live is None and pdir.record(plugin_id) is None:
            raise InstallError(f"{plugin_id} is not installed in {pdir.root}", "installed")
        version = _version_of(live) if live else None
        notes = []
        if live is not None:
            progress(f"taking {live.name} away")
            trash = pdir._mk("trash") / f"{plugin_id}-{secrets.token_hex(4)}"
            os.rename(live, trash)                 # one step: the plugin is gone for the supervisor
            shutil.rmtree(trash)
            notes.append(f"removed {live}")
        shutil.rmtree(pdir.versions(plugin_id), ignore_errors=True)
        pdir.record_path(plugin_id).unlink(missing_ok=True)
        run_dir = state_dir / "plugins" / plugin_id
        (run_dir / "config.json").unlink(missing_ok=True)
        if purge:
            for path in data_paths(state_dir, plugin_id):
                if path.is_dir():
                    shutil.rmtree(path)
                    notes.append(f"purged {path}")
                elif path.exists():
                    path.unlink()
                    notes.append(f"purged {path}")
        else:
            kept = [str(p) for p in data_paths(state_dir, plugin_id) if p.exists()]
            if kept:
                notes.append("kept data (use --purge to delete): " + ", ".join(kept))
        with contextlib.suppress(OSError):
            run_dir.rmdir()                        # only if nothing (no data) is left
        return Outcome("removed", plugin_id, version or "", version, live or pdir.root / plugin_id, "", notes=notes)


def botplugin_manifest(source: str, state_dir: Path, trust: Trust, namespace: str = "default",
                       policy: Policy | None = None, version: str | None = None) -> str:
    """Verify (TUF) and scan a release, then print the BotPlugin that names it."""
    if Path(source).is_file() or source.startswith(("http://", "https://")):
        raise InstallError("--kubernetes needs a release from the index (install NAME): the operator fetches "
                           "bundles from the index, never from a local file", "source")
    with contextlib.ExitStack() as stack:
        import tempfile

        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="precinct-k8s-")))
        fetched = fetch_source(source, state_dir, trust, tmp / "work", version)
        info = bundle_mod.extract(fetched.path, tmp / "plugin")
        scan_folder(tmp / "plugin", info.manifest).enforce(policy or Policy())
    manifest = info.manifest
    spec = manifest.model_dump(by_alias=True, exclude_unset=True, exclude={"name"}, mode="json")
    spec["bundle"] = {"name": manifest.id, "version": manifest.version}
    doc = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {
            "name": manifest.id,
            "namespace": namespace,
            "annotations": {
                BUNDLE_SHA256: fetched.sha256,
                PUBLISHER_KEYID: str(fetched.publisher),
                INDEX_ANNOTATION: str(fetched.index_url),
            },
        },
        "spec": spec,
    }
    header = (f"# BotPlugin for {manifest.id} {manifest.version}, verified against {fetched.index_url}\n"
              f"# bundle sha256 {fetched.sha256}\n")
    return header + yaml.safe_dump(doc, sort_keys=False)


__all__ = ["install", "rollback", "remove", "botplugin_manifest", "check_consent", "Trust", "Outcome",
           "PluginsDir", "install_wheels", "Consent", "Progress"]


# -- what is installed ----------------------------------------------------------------


LOCAL_SOURCE = "local folder"


def installed(plugins_dir: Path, state_dir: Path, states: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per plugin folder in `plugins_dir`: id, folder, version, where it
    came from (the install record's source, else a local folder), the versions
    kept for rollback, and its state from `states` (a running supervisor's
    status; None when no supervisor runs)."""
    pdir = PluginsDir(plugins_dir, state_dir)
    rows: list[dict[str, Any]] = []
    if not pdir.root.is_dir():
        return rows
    for folder in sorted(p for p in pdir.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if find_manifest(folder) is None:
            continue
        loaded, problems = load_path(folder)
        if not isinstance(loaded, Manifest):
            why = problems[0].message if problems else "not a plugin manifest"
            rows.append({"id": None, "folder": folder.name, "version": None, "source": None, "kept": [],
                         "state": f"Invalid: {why}"})
            continue
        record = pdir.record(loaded.id) or {}
        kept = sorted((p.name for p in pdir.versions(loaded.id).iterdir() if p.is_dir()), key=_version_key) \
            if pdir.versions(loaded.id).is_dir() else []
        state = None if states is None else states.get(loaded.id, "NotStarted")
        rows.append({"id": loaded.id, "folder": folder.name, "version": loaded.version,
                     "source": record.get("source") or LOCAL_SOURCE, "kept": kept, "state": state})
    return rows
