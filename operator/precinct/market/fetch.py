"""`precinct plugin fetch`: one verified release into a folder, for a Pod.

The operator renders a bundle-backed BotPlugin's Pod with an init container
that runs

    precinct plugin fetch --index URL NAME VERSION --dest /plugin [--root ROOT.json]

against the in-cluster index (a NetworkPolicy allows only that). Everything
is checked before anything runs: the TUF chain from the pinned root (so a
tampered, rolled-back, frozen or wrongly signed release is refused), the
bundle's own file manifest and archive rules (bundle.extract), that the
bundle is the release that was asked for, and the install scan policy. Then
its wheels are unpacked into `.deps/` (hash-checked, offline, no code run),
and only then is the content moved into DEST. On any failure DEST is left
empty and the command exits 1 with one line naming the check.

The pinned root comes from `--root`, else `$PRECINCT_INDEX_ROOT` (a path), else
`$PRECINCT_INDEX_ROOT_JSON` (the root's JSON itself: how the operator passes
it to the init container, from its `index_root_json` setting).

The operator's pre-flight check (`verify_release`) does the metadata part
only: the release exists in the index and its signed record names it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..settings import MarketSettings
from ..wire import environment as env
from . import bundle as bundle_mod
from .errors import BundleError, TrustError

ROOT_ENV = env.INDEX_ROOT
ROOT_JSON_ENV = env.INDEX_ROOT_JSON


def _root_file(root: Path | None, work: Path, root_json: str | None = None) -> Path:
    if root is not None:
        return root
    settings = MarketSettings.load()
    if settings.index_root:
        return settings.index_root
    text = root_json if root_json is not None else settings.index_root_json
    if text:
        path = work / "root.json"
        path.write_text(text)
        return path
    raise TrustError(f"no pinned root for the index: pass --root ROOT.json or set {ROOT_ENV} / {ROOT_JSON_ENV}",
                     "root")


def fetch_release(index_url: str, name: str, version: str, dest: Path, *, root: Path | None = None,
                  state_dir: Path | None = None, policy=None, install_deps: bool = True) -> bundle_mod.BundleInfo:
    """Verify NAME VERSION from the index and unpack it into DEST (empty or absent)."""
    from .client import IndexClient
    from .install import install_wheels
    from .scan import Policy, scan_folder

    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BundleError(f"{dest} is not an empty folder", "dest")
    with tempfile.TemporaryDirectory(prefix="precinct-fetch-") as tmp:
        work = Path(tmp)
        client = IndexClient(index_url, state_dir or work / "state", _root_file(root, work))
        release = client.fetch(name, version)
        stage = work / "plugin"
        info = bundle_mod.extract(release.path, stage)
        if info.sha256 != release.sha256:
            raise TrustError(f"{release.path} does not match the sha256 the index signed", "hash")
        if info.id != name or info.version != version:
            raise TrustError(f"the bundle signed as {name} {version} contains {info.id} {info.version}", "metadata")
        report = scan_folder(stage, info.manifest)
        report.enforce(policy or Policy())
        if install_deps:
            install_wheels(stage)
        dest.mkdir(parents=True, exist_ok=True)
        moved: list[Path] = []
        try:
            for child in sorted(stage.iterdir()):
                target = dest / child.name
                shutil.move(str(child), str(target))
                moved.append(target)
        except OSError:
            for target in moved:   # leave DEST empty, never half a plugin
                shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
            raise
    return info


def verify_release(index_url: str, name: str, version: str, state_dir: Path, *, root: Path | None = None,
                   root_json: str | None = None) -> str:
    """The operator's check before any Pod starts: the index (verified from
    the pinned root) holds a signed record for exactly NAME VERSION. Returns
    the release's sha256; raises TrustError naming the failed check."""
    from .client import IndexClient
    from .index import bundle_target

    with tempfile.TemporaryDirectory(prefix="precinct-verify-") as tmp:
        client = IndexClient(index_url, state_dir, _root_file(root, Path(tmp), root_json))
        updater = client.refresh()
        target = bundle_target(name, version)
        info = client._run(f"{name} {version}", lambda: updater.get_targetinfo(target))
        if info is None:
            try:
                known = ", ".join(client.versions(name, updater)) or "none"
            except TrustError:
                known = "none"
            raise TrustError(f"{name} {version} is not a signed release in {client.url} (published: {known})",
                             "not-found")
        custom = (info.custom or {}).get("precinct", {}) if isinstance(info.custom, dict) else {}
        if custom.get("id") != name or custom.get("version") != version:
            raise TrustError(f"the index's signed record for {target} names {custom.get('id')} "
                             f"{custom.get('version')}", "metadata")
        return info.hashes["sha256"]
