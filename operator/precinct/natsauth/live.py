"""Talking to a running server about account JWTs, as the system user.

With `resolver: {type: full}` the server answers on `$SYS`:
  - `$SYS.REQ.CLAIMS.UPDATE` (payload: an account JWT) stores and applies it
    at once: new imports work, revoked users are disconnected;
  - `$SYS.REQ.CLAIMS.DELETE` (payload: an operator-signed generic JWT with
    `nats.accounts`) deletes accounts, disconnecting their clients; it needs
    `allow_delete: true`;
  - `$SYS.REQ.ACCOUNT.<key>.CLAIMS.LOOKUP` returns the JWT the server holds.

Checked on 2.15.1: a live update is stored and applied whatever its `iat`
(even an older one replaces a newer one). `iat` matters elsewhere: preloads at
startup and merges between clustered servers keep the JWT with the later
`iat` and drop the other silently, and a user revocation at time T covers
user JWTs issued at or before T. Hence jwt.IssueClock.
"""

from __future__ import annotations

import json
from typing import Any

import nkeys
from nats.aio.client import Client
from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError

from . import jwt

UPDATE = "$SYS.REQ.CLAIMS.UPDATE"
DELETE = "$SYS.REQ.CLAIMS.DELETE"
LOOKUP = "$SYS.REQ.ACCOUNT.{}.CLAIMS.LOOKUP"


class ClaimsError(RuntimeError):
    """The server refused or ignored an account JWT change."""


async def _request(nc: Client, subject: str, payload: bytes, timeout: float) -> bytes:
    try:
        msg = await nc.request(subject, payload, timeout=timeout)
    except NoRespondersError:
        raise ClaimsError(
            f"nobody answers {subject}: the server needs `resolver: {{type: full}}` and this "
            "connection must be the system account's user"
        ) from None
    except NatsTimeoutError:
        raise ClaimsError(f"no answer on {subject} within {timeout}s") from None
    return msg.data


def _check_reply(data: bytes, what: str) -> dict[str, Any]:
    try:
        reply = json.loads(data)
    except json.JSONDecodeError:
        raise ClaimsError(f"{what}: unreadable reply {data[:200]!r}") from None
    if reply.get("error"):
        err = reply["error"]
        raise ClaimsError(f"{what}: {err.get('description') or err} (code {err.get('code')})")
    status = reply.get("data") or {}
    if status.get("code") not in (200, None):
        raise ClaimsError(f"{what}: unexpected reply {reply!r}")
    return status


async def lookup(nc: Client, account: str, timeout: float = 5.0) -> str | None:
    """The account JWT the server holds, or None if it holds none."""
    data = await _request(nc, LOOKUP.format(account), b"", timeout)
    return data.decode() or None


async def push(nc: Client, token: str, timeout: float = 5.0) -> None:
    """Store and apply one account JWT; raise if the server refuses it."""
    claims = jwt.decode(token, expect_type=jwt.ACCOUNT)
    what = f"updating account {claims.get('name')!r} ({claims['sub']})"
    _check_reply(await _request(nc, UPDATE, token.encode(), timeout), what)


async def delete(nc: Client, operator: nkeys.KeyPair, accounts: list[str], iat: int, timeout: float = 5.0) -> None:
    """Delete accounts from the server's resolver (and disconnect their users)."""
    if not accounts:
        return
    op = jwt.public_key(operator)
    token = jwt.encode(issuer=operator, subject=op, name="delete", nats=jwt.delete_request_nats(accounts), iat=iat)
    _check_reply(await _request(nc, DELETE, token.encode(), timeout), f"deleting accounts {accounts}")
