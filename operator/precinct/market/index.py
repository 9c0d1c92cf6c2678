"""The plugin index: a TUF repository built with python-tuf's Metadata API.

Layout of an index folder:

    DIR/keys/                 private role keys (0700): root, targets, snapshot, timestamp
    DIR/repository/           what `precinct market serve` publishes, nothing else
        metadata/1.root.json, root.json, targets.json, snapshot.json,
                 timestamp.json, plugin-<id>.json (one delegated role per plugin)
        targets/<id>/<id>-<version>.roseyplug, targets/<id>/versions.json

Trust chain, and what each link stops:

- `root` (pinned by every client) names the keys of the four top-level roles.
- `targets` (index key) delegates `<id>/*` to exactly one publisher key, as the
  role `plugin-<id>` (terminating). The first `market add` of a plugin binds
  it to the publisher key that signed it; a later release signed by any other
  key is refused here, and a delegated role re-signed by another key fails
  verification in every client. That is the publisher signature: TUF checks
  it, not an ad-hoc scheme.
- `plugin-<id>` (publisher key) lists each release with its length and
  sha256, plus custom fields (id, version, permissions, publisher keyid): a
  changed bundle no longer matches.
- `snapshot` pins every targets role's version: mixing an old delegated role
  with new metadata (a rollback of one plugin) is refused.
- `timestamp` (short-lived, one day by default) pins the snapshot: a mirror
  that keeps serving old metadata (a freeze) is refused once it expires.
  `precinct market refresh` re-signs it; `market serve` does so on its own.

Consistent snapshots are off: files keep stable names so the repository is
plain static files. A client that reads while `market add` writes may fail
one update and succeed on the next; it never accepts a mixed state, because
every file is checked against the version and hashes its parent signed.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from . import bundle as bundle_mod
from . import keys
from ..settings import MarketSettings
from .errors import TrustError

TOP_ROLES = ("root", "targets", "snapshot", "timestamp")
EXPIRY = {
    "root": timedelta(days=365),
    "targets": timedelta(days=365),
    "delegated": timedelta(days=365),
    "snapshot": timedelta(days=30),
    "timestamp": timedelta(days=1),
}
VERSIONS_FILE = "versions.json"


def role_for(plugin_id: str) -> str:
    return f"plugin-{plugin_id}"


def bundle_target(plugin_id: str, version: str) -> str:
    return f"{plugin_id}/{plugin_id}-{version}{bundle_mod.SUFFIX}"


def versions_target(plugin_id: str) -> str:
    return f"{plugin_id}/{VERSIONS_FILE}"


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _version_key(version: str) -> tuple:
    parts = []
    for piece in version.replace("-", ".").replace("+", ".").split("."):
        parts.append((0, int(piece), "") if piece.isdigit() else (1, 0, piece))
    return tuple(parts)


class Index:
    """One index folder; every method leaves the repository fully signed."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.keys_dir = folder / "keys"
        self.repo = folder / "repository"
        self.metadata_dir = self.repo / "metadata"
        self.targets_dir = self.repo / "targets"

    # -- files ------------------------------------------------------------------

    def _path(self, role: str) -> Path:
        return self.metadata_dir / f"{role}.json"

    def load(self, role: str) -> Metadata:
        path = self._path(role)
        if not path.is_file():
            raise TrustError(f"{self._path(role)} does not exist: is {self.folder} an index "
                             "(`precinct market init`)?", "index")
        return Metadata.from_bytes(path.read_bytes())

    def _write(self, role: str, md: Metadata, signer: CryptoSigner) -> None:
        md.signatures.clear()
        md.sign(signer)
        data = md.to_bytes(JSONSerializer(compact=False))
        tmp = self._path(role).with_suffix(".json.tmp")
        tmp.write_bytes(data)
        tmp.replace(self._path(role))
        if role == "root":
            (self.metadata_dir / f"{md.signed.version}.root.json").write_bytes(data)

    def signer(self, role: str) -> CryptoSigner:
        return keys.load_signer(self.keys_dir / f"{role}.key")

    @property
    def root_path(self) -> Path:
        """The file clients pin."""
        return self.metadata_dir / "1.root.json"

    # -- creating -----------------------------------------------------------------

    def init(self) -> Path:
        if self._path("root").exists():
            raise TrustError(f"{self.folder} already holds an index", "index")
        self.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.keys_dir, 0o700)
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        signers = {role: keys.generate(self.keys_dir / f"{role}.key")[0] for role in TOP_ROLES}
        now = _now()
        root = Metadata(Root(expires=now + EXPIRY["root"], consistent_snapshot=False))
        for role in TOP_ROLES:
            root.signed.add_key(signers[role].public_key, role)
        targets = Metadata(Targets(expires=now + EXPIRY["targets"]))
        targets.signed.delegations = Delegations(keys={}, roles={})
        snapshot = Metadata(Snapshot(expires=now + EXPIRY["snapshot"]))
        timestamp = Metadata(Timestamp(expires=now + EXPIRY["timestamp"]))
        self._write("root", root, signers["root"])
        self._write("targets", targets, signers["targets"])
        snapshot.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
        self._write("snapshot", snapshot, signers["snapshot"])
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        self._write("timestamp", timestamp, signers["timestamp"])
        return self.root_path

    # -- publishing -----------------------------------------------------------------

    def add(self, bundle_path: Path, publisher: CryptoSigner) -> bundle_mod.BundleInfo:
        """Publish one release, signed by `publisher` (its delegated role's key)."""
        info = bundle_mod.inspect(bundle_path)
        plugin_id, version = info.id, info.version
        role = role_for(plugin_id)
        keyid = publisher.public_key.keyid
        targets = self.load("targets")
        delegations = targets.signed.delegations
        assert delegations is not None and delegations.roles is not None
        changed_targets = False
        if role in delegations.roles:
            bound = delegations.roles[role].keyids
            if keyid not in bound:
                raise TrustError(
                    f"publisher key {keyid[:16]}... is not the key delegated for plugin {plugin_id} "
                    f"({', '.join(k[:16] + '...' for k in bound)}); only that publisher may release it", "publisher")
        else:
            delegations.keys[keyid] = publisher.public_key
            delegations.roles[role] = DelegatedRole(role, [keyid], 1, True, paths=[f"{plugin_id}/*"])
            changed_targets = True
        try:
            delegated = self.load(role)
            delegated.signed.version += 1
        except TrustError:
            delegated = Metadata(Targets(expires=_now()))
        target_name = bundle_target(plugin_id, version)
        if target_name in delegated.signed.targets:
            raise TrustError(f"{plugin_id} {version} is already published; releases are immutable, "
                             "bump the version", "index")
        dest = self.targets_dir / plugin_id
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundle_path, dest / Path(target_name).name)
        tf = TargetFile.from_file(target_name, str(dest / Path(target_name).name), ["sha256"])
        tf.unrecognized_fields["custom"] = {"precinct": {
            "id": plugin_id, "name": info.manifest.name, "version": version,
            "permissions": [p.value for p in info.manifest.permissions], "publisher": keyid,
        }}
        delegated.signed.targets[target_name] = tf
        versions = sorted({t.custom["precinct"]["version"] for n, t in delegated.signed.targets.items()
                           if n != versions_target(plugin_id)}, key=_version_key)
        listing = (json.dumps({"id": plugin_id, "versions": versions, "latest": versions[-1]}, indent=1) + "\n").encode()
        (dest / VERSIONS_FILE).write_bytes(listing)
        delegated.signed.targets[versions_target(plugin_id)] = TargetFile.from_data(versions_target(plugin_id), listing)
        delegated.signed.expires = _now() + EXPIRY["delegated"]
        self._write(role, delegated, publisher)
        if changed_targets:
            targets.signed.version += 1
            self._write("targets", targets, self.signer("targets"))
        self._bump_snapshot({"targets": targets.signed.version, role: delegated.signed.version})
        return info

    def _bump_snapshot(self, versions: dict[str, int], expires: datetime | None = None) -> None:
        snapshot = self.load("snapshot")
        for role, version in versions.items():
            snapshot.signed.meta[f"{role}.json"] = MetaFile(version=version)
        snapshot.signed.version += 1
        snapshot.signed.expires = expires or _now() + EXPIRY["snapshot"]
        self._write("snapshot", snapshot, self.signer("snapshot"))
        self.refresh(expires=expires)

    def refresh(self, expires: datetime | None = None) -> Metadata:
        """Re-sign the timestamp (new version, new expiry). Run at least daily,
        or clients will call the index frozen. `expires` in the past exists for
        tests and drills."""
        timestamp = self.load("timestamp")
        snapshot = self.load("snapshot")
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        timestamp.signed.version += 1
        timestamp.signed.expires = expires or _now() + EXPIRY["timestamp"]
        self._write("timestamp", timestamp, self.signer("timestamp"))
        return timestamp

    def timestamp_expires(self) -> datetime:
        return self.load("timestamp").signed.expires

    def listing(self) -> dict[str, list[str]]:
        out = {}
        targets = self.load("targets")
        for role in sorted((targets.signed.delegations.roles or {}) if targets.signed.delegations else {}):
            plugin_id = role[len("plugin-"):]
            try:
                md = self.load(role)
            except TrustError:
                continue
            out[plugin_id] = sorted((t.custom["precinct"]["version"] for n, t in md.signed.targets.items()
                                     if n.endswith(bundle_mod.SUFFIX)), key=_version_key)
        return out


def serve(folder: Path, port: int = 0, host: str = "127.0.0.1", auto_refresh: bool = True, ready=None) -> None:
    """Serve DIR/repository as static files (never DIR/keys) until interrupted.
    With auto_refresh, the timestamp is re-signed when half its life is gone."""
    import functools
    import threading

    index = Index(folder)
    index.load("timestamp")
    handler = functools.partial(_QuietHandler, directory=str(index.repo))
    server = http.server.ThreadingHTTPServer((host, port), handler)
    stop = threading.Event()

    def refresher() -> None:
        while not stop.wait(60):
            remaining = index.timestamp_expires() - _now()
            if remaining < EXPIRY["timestamp"] / 2:
                index.refresh()

    if auto_refresh:
        if index.timestamp_expires() - _now() < EXPIRY["timestamp"] / 2:
            index.refresh()
        threading.Thread(target=refresher, daemon=True).start()
    if ready is not None:
        ready(server.server_address)
    try:
        server.serve_forever()
    finally:
        stop.set()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def list_directory(self, path):  # no directory listings: clients ask for exact names
        self.send_error(404)
        return None

    def log_message(self, fmt, *args):  # quiet unless asked
        if MarketSettings.load().market_log:
            super().log_message(fmt, *args)
