"""Bundle verification before any Pod starts: a release must be in the
index, signed, checked with TUF from the operator's pinned root
(settings.index_root_json). TUF state lives in the operator's state dir so a
rolled-back or frozen index is noticed across calls. Successes are cached
for `ttl` seconds; failures never are."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

log = logging.getLogger("precinct.operator")


class BundleVerifier:
    def __init__(self, index_url: str, root_json: str, state_dir: Path, ttl: float = 300.0) -> None:
        self.index_url, self.root_json, self.state_dir, self.ttl = index_url, root_json, state_dir, ttl
        self._ok: dict[tuple[str, str], float] = {}

    async def verify(self, name: str, version: str) -> tuple[bool, str]:
        """(True, sha256) or (False, what failed)."""
        from ..market.errors import MarketError
        from ..market.fetch import verify_release

        if not self.root_json:
            return False, ("cannot verify the bundle: the operator has no pinned root for the index "
                           "(setting index_root_json)")
        key = (name, version)
        if time.monotonic() - self._ok.get(key, -1e9) < self.ttl:
            return True, ""
        try:
            sha = await asyncio.to_thread(verify_release, self.index_url, name, version, self.state_dir,
                                          root_json=self.root_json)
        except MarketError as exc:
            return False, f"{exc.check or 'check'}: {exc}"[:1000]
        except Exception as exc:  # noqa: BLE001 - anything else is still "not verified"
            return False, f"{type(exc).__name__}: {exc}"[:1000]
        self._ok[key] = time.monotonic()
        log.info("bundle %s %s verified against %s (sha256 %s)", name, version, self.index_url, sha)
        return True, sha
