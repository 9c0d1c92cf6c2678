"""NATS v2 JWTs and creds files, written by hand.

A NATS JWT is `base64url(header).base64url(claims).base64url(signature)`,
unpadded, where the signature is Ed25519 by the issuer's nkey over the first
two parts. The server checks the signature, that the issuer is trusted (the
operator for accounts, the account for users) and the `nats` section; it never
recomputes `jti`, but the server's JWT store uses `jti` to spot re-sends of the
same JWT, so it must change whenever the claims do.

Why not the `nats-jwt` package: its account claims emit a `signing_keys`
shape nats-server 2.15 rejects (checked with 2.15.1), and the format is
small.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.signing
import nkeys

from .files import write_private

HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
CLAIMS_VERSION = 2

OPERATOR = "operator"
ACCOUNT = "account"
USER = "user"

# Public-key prefix bytes (first byte of the decoded key), from the nkeys spec.
_PREFIXES = {
    "O": nkeys.PREFIX_BYTE_OPERATOR,
    "A": nkeys.PREFIX_BYTE_ACCOUNT,
    "U": nkeys.PREFIX_BYTE_USER,
}


class JWTError(ValueError):
    """A token that is malformed, mis-signed, or not what the caller expected."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise JWTError(f"not base64url: {exc}") from None


def _canonical(obj: Any) -> bytes:
    # Sorted keys make the same claims always produce the same bytes, so the
    # jti (and our "did anything change" diff) is stable.
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def public_key(kp: nkeys.KeyPair) -> str:
    return kp.public_key.decode("ascii")


def verify_key(public: str) -> nacl.signing.VerifyKey:
    """The Ed25519 key inside an encoded nkey public key (O…, A…, U…)."""
    try:
        raw = base64.b32decode(public + "=" * (-len(public) % 8))
    except (binascii.Error, ValueError):
        raise JWTError(f"{public!r} is not an nkey public key") from None
    if len(raw) != 35 or raw[0] != _PREFIXES.get(public[:1]):
        raise JWTError(f"{public!r} is not an operator, account or user public key")
    body, crc = raw[:-2], raw[-2:]
    if nkeys.crc16_checksum(body) != crc:
        raise JWTError(f"{public!r} has a bad checksum")
    return nacl.signing.VerifyKey(bytes(body[1:]))


def jti(claims: Mapping[str, Any]) -> str:
    """base32 (unpadded) SHA-512/256 of the claims without their own jti."""
    body = {k: v for k, v in claims.items() if k != "jti"}
    digest = hashlib.new("sha512_256", _canonical(body)).digest()
    return base64.b32encode(digest).rstrip(b"=").decode("ascii")


def encode(*, issuer: nkeys.KeyPair, subject: str, name: str, nats: Mapping[str, Any], iat: int) -> str:
    """Sign claims. `nats` is the type-specific section; it must carry `type`."""
    if "type" not in nats:
        raise JWTError("the nats section needs a type")
    claims: dict[str, Any] = {
        "iat": int(iat),
        "iss": public_key(issuer),
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": CLAIMS_VERSION},
    }
    claims["jti"] = jti(claims)
    signing_input = f"{_b64(_canonical(HEADER))}.{_b64(_canonical(claims))}"
    signature = issuer.sign(signing_input.encode("ascii"))
    return f"{signing_input}.{_b64(signature)}"


def decode(token: str, *, expect_type: str | None = None) -> dict[str, Any]:
    """Claims of a token, after checking its header and its issuer's signature.

    Used to read back JWTs we stored ourselves (to diff and to keep `iat`
    increasing across restarts); a file that fails these checks was not
    written by us and must not be trusted.
    """
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise JWTError("a JWT has three dot-separated parts")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
    except ValueError as exc:   # JSON or UTF-8 errors
        raise JWTError(f"not JSON: {exc}") from None
    if not isinstance(header, dict) or str(header.get("typ", "")).upper() != "JWT" or header.get("alg") != HEADER["alg"]:
        raise JWTError(f"unexpected JWT header {header!r}")
    if not isinstance(claims, dict) or not isinstance(claims.get("iss"), str) or not isinstance(claims.get("nats"), dict):
        raise JWTError("claims without an issuer or a nats section")
    try:
        verify_key(claims["iss"]).verify(f"{parts[0]}.{parts[1]}".encode("ascii"), _unb64(parts[2]))
    except nacl.exceptions.BadSignatureError:
        raise JWTError("signature does not match the issuer") from None
    if expect_type is not None and claims["nats"].get("type") != expect_type:
        raise JWTError(f"expected a {expect_type} JWT, got {claims['nats'].get('type')!r}")
    return claims


def content(claims: Mapping[str, Any]) -> dict[str, Any]:
    """What a JWT says, without when it was said: equal content means a
    re-issue would change nothing, so the old token is kept."""
    return {k: v for k, v in claims.items() if k not in ("iat", "jti")}


class IssueClock:
    """`iat` per subject, strictly increasing.

    Why it matters (nats-server 2.15.1): a preloaded JWT at startup, or one
    merged from a clustered peer, is dropped silently when the stored copy
    has a later `iat`; and a revocation at time T covers every user JWT
    issued at or before T, so a user JWT re-issued in the same second as the
    one it supersedes would be revoked along with it. (Live pushes through
    `$SYS.REQ.CLAIMS.UPDATE` are applied whatever their `iat`.) Whole seconds
    make two issues in one second collide, so a subject's next `iat` is
    max(now, last + 1): it may run a few seconds ahead of the wall clock
    during bursts, never behind what was issued before.
    """

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._last: dict[str, int] = {}

    def observe(self, subject: str, iat: int) -> None:
        """Remember an `iat` issued earlier (e.g. read back after a restart)."""
        if iat > self._last.get(subject, 0):
            self._last[subject] = int(iat)

    def last(self, subject: str) -> int:
        return self._last.get(subject, 0)

    def next(self, subject: str) -> int:
        iat = max(int(self._now()), self._last.get(subject, 0) + 1)
        self._last[subject] = iat
        return iat


# -- claim bodies (the `nats` section) ----------------------------------------

def operator_nats(system_account: str) -> dict[str, Any]:
    return {"type": OPERATOR, "system_account": system_account}


def account_nats(
    *,
    exports: list[dict[str, Any]],
    imports: list[dict[str, Any]],
    limits: dict[str, Any],
    revocations: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": ACCOUNT, "limits": limits}
    if exports:
        body["exports"] = exports
    if imports:
        body["imports"] = imports
    if revocations:
        body["revocations"] = dict(revocations)
    return body


def user_nats(
    *,
    publish: list[str],
    subscribe: list[str],
    max_responses: int = 0,
    subs: int = -1,
    payload: int = -1,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": USER,
        "pub": {"allow": list(publish)},
        "sub": {"allow": list(subscribe)},
        # The server reads a missing limit as 0, not as unlimited.
        "subs": subs,
        "data": -1,
        "payload": payload,
    }
    if max_responses > 0:
        # Lets the user publish to the reply subject of a request it received,
        # at most `max` times per request; ttl 0 means the server default.
        body["resp"] = {"max": max_responses, "ttl": 0}
    return body


def delete_request_nats(accounts: list[str]) -> dict[str, Any]:
    """Body of the operator-signed request `$SYS.REQ.CLAIMS.DELETE` accepts.
    The server decodes it as a generic claim and only reads `accounts`."""
    return {"type": "generic", "accounts": list(accounts)}


# -- files --------------------------------------------------------------------

def creds_text(user_jwt: str, user_seed: str) -> str:
    """The `.creds` layout `nats` tools and nats-py's `user_credentials=` read:
    the JWT on the line after its BEGIN marker, the seed likewise."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n"
        "\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n"
        "\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_seed}\n"
        "------END USER NKEY SEED------\n"
        "\n"
        "*************************************************************\n"
    )


def write_creds(path: Path, user_jwt: str, user_seed: str) -> None:
    write_private(path, creds_text(user_jwt, user_seed))


def read_creds_jwt(path: Path) -> str | None:
    """The user JWT inside a creds file we wrote, or None if there is none."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return None
    for i, line in enumerate(lines):
        if "BEGIN NATS USER JWT" in line and i + 1 < len(lines):
            return lines[i + 1].strip()
    return None
