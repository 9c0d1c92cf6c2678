"""Where nkeys live: one seed file per key under `<state>/keys`.

An account's public key *is* the account as far as the server is concerned
(subjects, imports and revocations all hang off it), so keys are created once
and reused across restarts; losing them means a new identity for everything.
Removing a plugin deletes its seeds, so a plugin that comes back later gets a
fresh account and nothing issued for its old one can ever work again.

Layout (directories 0700, seeds 0600):

    keys/operator.nk
    keys/system/{account,user}.nk       SYS account and the user that pushes JWTs
    keys/core/{account,user}.nk
    keys/platform/{account,user}.nk
    keys/plugins/<id>/{account,user}.nk
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nkeys

from ..plan.sandbox import CORE, PLATFORM
from ..spec.identity import TOKEN
from .files import private_dir, write_private

# The plan names accounts by role: `core`, `platform`, `plugin:<id>`. The
# system account is ours alone (it pushes JWTs), so the plan never names it.
SYSTEM = "system"
SHARED_ROLES = (SYSTEM, CORE, PLATFORM)
PLUGIN_ROLE_PREFIX = "plugin:"

_KINDS = {
    "operator": nkeys.PREFIX_BYTE_OPERATOR,
    "account": nkeys.PREFIX_BYTE_ACCOUNT,
    "user": nkeys.PREFIX_BYTE_USER,
}


class KeyStoreError(RuntimeError):
    pass


class KeyStore:
    def __init__(self, root: Path | str) -> None:
        self.root = private_dir(Path(root))
        self._cache: dict[Path, nkeys.KeyPair] = {}
        # Cached paths per plugin, so forgetting one plugin costs O(its keys).
        self._plugin_paths: dict[str, set[Path]] = {}

    # -- where -------------------------------------------------------------

    def _dir(self, role: str) -> Path:
        if role in SHARED_ROLES:
            return self.root / role
        return self._plugin_dir(plugin_id_of(role))

    def _plugin_dir(self, plugin_id: str) -> Path:
        if not TOKEN.fullmatch(plugin_id):
            # Plugin ids are validated DNS labels; refuse anything that could
            # escape the keys directory even if a caller forgot to validate.
            raise KeyStoreError(f"{plugin_id!r} is not a valid plugin id")
        return self.root / "plugins" / plugin_id

    # -- what ----------------------------------------------------------------

    def operator(self) -> nkeys.KeyPair:
        return self._load_or_create(self.root / "operator.nk", "operator")

    def account(self, role: str) -> nkeys.KeyPair:
        """`role` is `system`, `core`, `platform` or `plugin:<id>`."""
        return self._load_or_create(self._dir(role) / "account.nk", "account")

    def user(self, role: str) -> nkeys.KeyPair:
        """The one user of the account `role`."""
        return self._load_or_create(self._dir(role) / "user.nk", "user")

    def plugin_ids(self) -> list[str]:
        """Plugins whose keys exist (current or removed-but-not-yet-cleaned)."""
        base = self.root / "plugins"
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and TOKEN.fullmatch(p.name))

    def remove_plugin(self, plugin_id: str) -> None:
        """Forget a plugin's account and user for good."""
        path = self._plugin_dir(plugin_id)
        if path.exists():
            shutil.rmtree(path)
        for cached in self._plugin_paths.pop(plugin_id, ()):
            self._cache.pop(cached, None)

    # -- how -----------------------------------------------------------------

    def _load_or_create(self, path: Path, kind: str) -> nkeys.KeyPair:
        if path in self._cache:
            return self._cache[path]
        private_dir(path.parent)
        if not path.exists():
            seed = nkeys.encode_seed(os.urandom(32), _KINDS[kind]).decode("ascii")
            # Not read back: inside batched_writes() it is on disk only later.
            write_private(path, seed + "\n")
        else:
            seed = path.read_text().strip()
        try:
            kp = nkeys.from_seed(bytearray(seed.encode("ascii")))
        except nkeys.NkeysError as exc:
            raise KeyStoreError(f"{path}: not an nkey seed ({exc})") from None
        expected = {"operator": "O", "account": "A", "user": "U"}[kind]
        if not kp.public_key.startswith(expected.encode()):
            raise KeyStoreError(f"{path}: holds a {kp.public_key[:1].decode()}-key, expected an {kind} key")
        self._cache[path] = kp
        if path.parent.parent == self.root / "plugins":
            self._plugin_paths.setdefault(path.parent.name, set()).add(path)
        return kp


def plugin_id_of(role: str) -> str:
    if not role.startswith(PLUGIN_ROLE_PREFIX):
        raise KeyStoreError(f"{role!r} is not an account role (system, core, platform, plugin:<id>)")
    return role[len(PLUGIN_ROLE_PREFIX):]
