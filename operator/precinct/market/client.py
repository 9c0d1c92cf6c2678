"""Fetching releases from an index with python-tuf's `ngclient.Updater`.

Trust starts from a root file the operator pins once (`--root`, copied from
the index's `repository/metadata/1.root.json` over a channel they trust).
The client keeps TUF's metadata in the state dir
(`<state>/market/<index>/metadata`), so each run compares what the index
serves now with what this machine has already seen:

- a bundle whose bytes differ from the signed length/sha256 -> rejected;
- metadata older than the version already trusted (rollback) -> rejected;
- a timestamp past its expiry (a frozen or stale mirror) -> rejected;
- a delegated role not signed by the plugin's publisher key -> rejected.

`describe()` turns python-tuf's exceptions into one sentence naming the check.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, TargetFile
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface

from .errors import TrustError
from .index import _version_key, bundle_target, role_for, versions_target

DEFAULT_FILE = "default-index.json"
ROLE_PREFIX = role_for("")          # "plugin-": the delegated role of each plugin


class FileFetcher(FetcherInterface):
    """`file://` URLs: an index copied to a disk or shared folder (air-gapped hosts)."""

    def _fetch(self, url: str) -> Iterator[bytes]:
        path = Path(unquote(urlparse(url).path))
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise tuf_exc.DownloadHTTPError(f"{path} not found", 404) from None
        yield data


def describe(exc: BaseException, what: str = "") -> str:
    """One line saying which check failed, in terms an operator can act on."""
    where = f" ({what})" if what else ""
    text = str(exc)
    if isinstance(exc, tuf_exc.ExpiredMetadataError):
        return (f"the index's metadata has expired{where}: {text}. Either the index is frozen (a mirror keeps "
                "serving old files to hide new releases) or its owner has not run `precinct market refresh`")
    if isinstance(exc, tuf_exc.EqualVersionNumberError):
        return f"the index served changed metadata under an already-trusted version number{where}: {text}"
    if isinstance(exc, tuf_exc.BadVersionNumberError):
        return (f"rollback rejected{where}: the index served older metadata than this machine already "
                f"trusts ({text})")
    if isinstance(exc, tuf_exc.LengthOrHashMismatchError):
        return (f"tampered file rejected{where}: its length or sha256 does not match what the index signed "
                f"({text})")
    if isinstance(exc, tuf_exc.UnsignedMetadataError):
        return (f"signature check failed{where}: {text} (signed by a key the index does not trust for that role, "
                "e.g. the wrong publisher key, or edited after signing)")
    if isinstance(exc, tuf_exc.DownloadHTTPError):
        return f"the index could not serve a file{where}: HTTP {exc.status_code}: {text}"
    if isinstance(exc, tuf_exc.DownloadError):
        return f"download failed{where}: {text} (is the index reachable?)"
    if isinstance(exc, tuf_exc.RepositoryError):
        return f"the index's metadata is invalid{where}: {type(exc).__name__}: {text}"
    return f"{type(exc).__name__}{where}: {text}"


def _check(exc: BaseException) -> str:
    if isinstance(exc, tuf_exc.ExpiredMetadataError):
        return "freeze"
    if isinstance(exc, tuf_exc.BadVersionNumberError):
        return "rollback"
    if isinstance(exc, tuf_exc.LengthOrHashMismatchError):
        return "hash"
    if isinstance(exc, tuf_exc.UnsignedMetadataError):
        return "signature"
    if isinstance(exc, tuf_exc.DownloadError):
        return "download"
    return "metadata"


@dataclass(frozen=True)
class Release:
    id: str
    version: str
    path: Path            # verified bundle in the client's cache
    sha256: str
    length: int
    publisher: str        # keyid of the delegated publisher key
    index_url: str


def _slug(url: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9.-]+", "_", url.split("://", 1)[-1]).strip("_")[:60]
    return f"{clean}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


class IndexClient:
    """One index, as seen from one state dir."""

    def __init__(self, url: str, state_dir: Path, root: Path | None = None) -> None:
        self.url = url.rstrip("/")
        self.home = state_dir / "market" / _slug(self.url)
        self.metadata_dir = self.home / "metadata"
        self.cache_dir = self.home / "targets"
        self.pinned = self.home / "pinned-root.json"
        self._pin(root)

    def _pin(self, root: Path | None) -> None:
        if root is not None:
            try:
                data = root.read_bytes()
                Metadata.from_bytes(data)
            except Exception as exc:
                raise TrustError(f"{root} is not TUF root metadata: {exc}", "root") from None
            if self.pinned.exists() and self.pinned.read_bytes() != data:
                raise TrustError(f"{root} differs from the root this machine pinned for {self.url} "
                                 f"({self.pinned}); a new root arrives through the index's own signed rotation. "
                                 f"To re-pin on purpose, delete {self.home}", "root")
            self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.pinned.write_bytes(data)
        elif not self.pinned.exists():
            raise TrustError(f"no pinned root for {self.url}: pass --root with the index's 1.root.json "
                             "(obtained from its owner over a channel you trust)", "root")

    def _updater(self) -> Updater:
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fetcher = FileFetcher() if self.url.startswith("file://") else None
        return Updater(str(self.metadata_dir), f"{self.url}/metadata/", str(self.cache_dir), f"{self.url}/targets/",
                       fetcher=fetcher, bootstrap=self.pinned.read_bytes())

    def _run(self, what: str, fn):
        try:
            return fn()
        except TrustError:
            raise
        except (tuf_exc.RepositoryError, tuf_exc.DownloadError) as exc:
            raise TrustError(describe(exc, what), _check(exc)) from None

    def refresh(self) -> Updater:
        updater = self._updater()
        self._run("refreshing top-level metadata", updater.refresh)
        return updater

    def versions(self, plugin_id: str, updater: Updater | None = None) -> list[str]:
        updater = updater or self.refresh()
        info = self._run(f"{plugin_id} versions", lambda: updater.get_targetinfo(versions_target(plugin_id)))
        if info is None:
            raise TrustError(f"{plugin_id} is not in the index {self.url}", "not-found")
        path = self._download(updater, info, f"{plugin_id} versions")
        try:
            listing = json.loads(Path(path).read_text())
            return sorted(listing["versions"], key=_version_key)
        except (ValueError, KeyError, TypeError) as exc:
            raise TrustError(f"{plugin_id}/versions.json is malformed: {exc}", "metadata") from None

    def _download(self, updater: Updater, info: TargetFile, what: str) -> str:
        # Never reuse the cache blindly: find_cached_target re-hashes it against the signed info.
        cached = self._run(what, lambda: updater.find_cached_target(info))
        return cached or self._run(what, lambda: updater.download_target(info))

    def publishers(self, updater: Updater | None = None) -> dict[str, list[str]]:
        """Every plugin the index delegates (one role `plugin-<id>` each) -> the
        keyids of the publisher key(s) its role must be signed by, from the
        top-level targets metadata the updater has just verified and stored."""
        updater = updater or self.refresh()
        try:
            targets = Metadata.from_bytes((self.metadata_dir / "targets.json").read_bytes())
        except (OSError, ValueError) as exc:
            raise TrustError(f"cannot read the verified targets metadata of {self.url}: {exc}", "metadata") from None
        roles = targets.signed.delegations.roles if targets.signed.delegations else None
        return {name[len(ROLE_PREFIX):]: list(role.keyids) for name, role in sorted((roles or {}).items())
                if name.startswith(ROLE_PREFIX)}

    def fetch(self, plugin_id: str, version: str | None = None, updater: Updater | None = None) -> Release:
        """Verify and download one release (the latest when version is None);
        `updater`: one already refreshed in this run (browsing many plugins)."""
        updater = updater or self.refresh()
        if version is None:
            version = self.versions(plugin_id, updater)[-1]
        name = bundle_target(plugin_id, version)
        info = self._run(f"{plugin_id} {version}", lambda: updater.get_targetinfo(name))
        if info is None:
            known = ", ".join(self.versions(plugin_id, updater))
            raise TrustError(f"{plugin_id} {version} is not in the index (published: {known})", "not-found")
        custom = (info.custom or {}).get("precinct", {}) if isinstance(info.custom, dict) else {}
        if custom.get("id") != plugin_id or custom.get("version") != version:
            raise TrustError(f"the index's record for {name} names {custom.get('id')} {custom.get('version')}",
                             "metadata")
        path = Path(self._download(updater, info, f"{plugin_id} {version}"))
        return Release(plugin_id, version, path, info.hashes["sha256"], info.length, str(custom.get("publisher")),
                       self.url)

    def forget(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)


def save_default(state_dir: Path, url: str) -> None:
    (state_dir / "market").mkdir(parents=True, exist_ok=True, mode=0o700)
    (state_dir / "market" / DEFAULT_FILE).write_text(json.dumps({"url": url}) + "\n")


def default_url(state_dir: Path) -> str | None:
    try:
        return json.loads((state_dir / "market" / DEFAULT_FILE).read_text())["url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def open_index(state_dir: Path, url: str | None, root: Path | None) -> IndexClient:
    """The index named on the command line (remembered as the default), or the default."""
    if url is None:
        url = default_url(state_dir)
        if url is None:
            raise TrustError("no index configured: pass --index URL --root ROOT.json once", "root")
    client = IndexClient(url, state_dir, root)
    save_default(state_dir, client.url)
    return client
