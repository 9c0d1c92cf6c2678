"""The fleet ceiling: how many plugins the shared accounts' JWTs can hold.

A NATS import names one exporting account, so the `core` account imports
each plugin's commands and the `platform` account imports each plugin's
chat, events, replies, ping and config subjects: both JWTs list every
plugin's edges and grow with the fleet (docs/nats.md#fleet-ceiling says why
wildcard edges cannot remove that). The server takes an account JWT only as
one message (`$SYS.REQ.CLAIMS.UPDATE`), and a message larger than its
`max_payload` (1 MiB by default) is refused before it is sent: past that
point no plugin could be added or removed any more.

So each shared JWT is kept under `SHARED_JWT_LIMIT`: plugins are admitted in
claim order (running plugins first, then folder-name order) and the first
one that would push either JWT past the limit is refused with `FleetFull`,
and so is every later one that does not fit. The manifest bounds
(spec/model.py) keep one plugin's share to a few KiB, so a typical fleet
holds several hundred plugins (docs/nats.md#fleet-ceiling has the numbers).

Pure: sizes are computed from the plans with a placeholder key of the real
length, so `precinct validate` gives the same answer as `precinct up`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..plan.sandbox import CORE, PLATFORM, Import, SandboxPlan, core_account, platform_account
from . import jwt
from .accounts import export_claim, import_claim, limits

FLEET_FULL = "FleetFull"
SHARED_JWT_LIMIT = 768 * 1024      # bytes; the server's default max_payload is 1 MiB
_KEY = "A" * 56                    # every nkey public key has 56 characters
_JTI = "J" * 52                    # base32 of a 32-byte digest, unpadded
_SIGNATURE = math.ceil(64 * 4 / 3)  # an Ed25519 signature, base64url unpadded


def _size(item: dict) -> int:
    return len(json.dumps(item, separators=(",", ":"), sort_keys=True).encode())


def jwt_bytes(claims_json: int) -> int:
    """Length of a signed JWT whose claims are `claims_json` bytes of JSON."""
    header = math.ceil(_size(jwt.HEADER) * 4 / 3)
    return header + 1 + math.ceil(claims_json * 4 / 3) + 1 + _SIGNATURE


def _base(role: str) -> int:
    """JSON size of the role's claims with no plugin at all."""
    plan = core_account([]) if role == CORE else platform_account([])
    claims = {
        "iat": 10**10, "iss": _KEY, "jti": _JTI, "name": role, "sub": _KEY,
        "nats": {**jwt.account_nats(
            exports=[export_claim(e) for e in plan.exports],
            imports=[import_claim(i, lambda _r: _KEY) for i in plan.imports],
            limits=limits(plan), revocations=None,
        ), "version": jwt.CLAIMS_VERSION},
    }
    # + a key the first plugin adds (platform has no imports without plugins)
    return _size(claims) + len(',"imports":[]')


def shares(plan: SandboxPlan) -> dict[str, int]:
    """Bytes of claims JSON this plugin adds to the core and platform JWTs
    (each list item plus its comma), mirroring sandbox.core_account and
    sandbox.platform_account."""
    key = lambda _role: _KEY  # noqa: E731
    core = [*plan.core_imports,
            *(Import(PLATFORM, e.subject, "stream") for e in plan.platform_exports if e.kind == "stream")]
    return {
        CORE: sum(_size(import_claim(i, key)) + 1 for i in core),
        PLATFORM: sum(_size(import_claim(i, key)) + 1 for i in plan.platform_imports)
        + sum(_size(export_claim(e)) + 1 for e in plan.platform_exports),
    }


@dataclass(frozen=True)
class Refusal:
    plan: SandboxPlan
    message: str


@dataclass(frozen=True)
class Fit:
    admitted: list[SandboxPlan]
    refused: list[Refusal]
    sizes: dict[str, int]          # role -> estimated JWT bytes with the admitted plans


def fit(plans: Sequence[SandboxPlan], limit: int | None = None) -> Fit:
    """Admit plans in the given (claim) order while both shared JWTs stay
    under `limit` (default SHARED_JWT_LIMIT)."""
    limit = SHARED_JWT_LIMIT if limit is None else limit
    totals = {CORE: _base(CORE), PLATFORM: _base(PLATFORM)}
    admitted: list[SandboxPlan] = []
    refused: list[Refusal] = []
    for plan in plans:
        share = shares(plan)
        after = {role: jwt_bytes(totals[role] + share[role]) for role in totals}
        over = [role for role, size in after.items() if size > limit]
        if over:
            role = over[0]
            refused.append(Refusal(plan, (
                f"the fleet is full: with this plugin the shared {role} account's JWT would be "
                f"{after[role]:,} bytes, over the limit of {limit:,} (this plugin adds "
                f"{jwt_bytes(share[role]) - jwt_bytes(0):,}; see docs/nats.md#fleet-ceiling)")))
            continue
        admitted.append(plan)
        for role in totals:
            totals[role] += share[role]
    return Fit(admitted, refused, {role: jwt_bytes(size) for role, size in totals.items()})
