"""Identity: the one object a supervisor uses for NATS auth.

    identity = Identity(state_dir, port=4222)    # port=None: a free one
    identity.prepare(plans)                      # keys, JWTs and creds on disk
    server = NatsServer(identity.server_config())
    await server.start()                         # or run identity.server_argv() yourself
    await identity.connect(identity.url)         # as the system user
    ...
    result = await identity.sync(new_plans)      # push what changed, live
    identity.creds_for("dice")                   # hand to that plugin only

State directory (0700; every secret 0600):

    keys/…                        nkey seeds (keys.py)
    creds/{system,core,platform}.creds, creds/plugins/<id>.creds
    accounts/…/<role>.jwt         the account JWTs last issued
    operator.jwt
    removed.json                  removed plugins whose accounts still await deletion
    jwt/                          the server's own resolver directory
    nats-server.conf, nats-server.log

A JWT is re-signed only when its content changes, so `iat`s only move when
something did, and a sync with nothing new pushes nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.aio.client import Client

from ..plan.sandbox import CORE, PLATFORM, AccountPlan, SandboxPlan, plugin_account
from . import jwt, live
from .accounts import Claims, account_claims, account_plans, tombstone_claims, user_claims
from .files import batched_writes, private_dir, write_private
from .keys import PLUGIN_ROLE_PREFIX, SYSTEM, KeyStore, plugin_id_of
from .server import HOST, ServerConfig, find_binary, free_port, write_config


@dataclass(frozen=True)
class SyncResult:
    changed: tuple[str, ...]   # account roles with a new JWT, in push order
    removed: tuple[str, ...]   # plugin roles revoked (and deleted from the server when live)
    live: bool                 # pushed to a running server (else: takes effect at next start)


class Identity:
    def __init__(
        self, state_dir: Path | str, *, port: int | None = None, host: str = HOST, http_port: int | None = None,
    ) -> None:
        self.state = private_dir(Path(state_dir))
        self.host = host
        self._port = port
        self.http_port = http_port
        self.keys = KeyStore(self.state / "keys")
        self.clock = jwt.IssueClock()
        self.resolver_dir = self.state / "jwt"
        self.config_path = self.state / "nats-server.conf"
        self.log_path = self.state / "nats-server.log"
        self._nc: Client | None = None
        self._lock = asyncio.Lock()
        # Account key -> jti the server is known to hold. Filled by
        # server_config() (the server will preload exactly those) and by pushes.
        self._pushed: dict[str, str] = {}
        # Role -> (plan, jti of its account JWT) as last issued by this
        # object: a role whose plan is unchanged (and whose files still exist)
        # is skipped without reading, comparing or signing anything.
        self._issued: dict[str, tuple[AccountPlan, str]] = {}
        self._observe_issued()

    # -- paths ---------------------------------------------------------------

    def _account_path(self, role: str) -> Path:
        if role.startswith(PLUGIN_ROLE_PREFIX):
            return self.state / "accounts" / "plugins" / f"{plugin_id_of(role)}.jwt"
        return self.state / "accounts" / f"{role}.jwt"

    def _creds_path(self, role: str) -> Path:
        if role.startswith(PLUGIN_ROLE_PREFIX):
            return self.state / "creds" / "plugins" / f"{plugin_id_of(role)}.creds"
        return self.state / "creds" / f"{role}.creds"

    def _removed_path(self) -> Path:
        return self.state / "removed.json"

    # -- what callers hand out ------------------------------------------------

    def creds_for(self, plugin_id: str) -> Path:
        return self._existing_creds(plugin_account(plugin_id))

    def core_creds(self) -> Path:
        return self._existing_creds(CORE)

    def platform_creds(self) -> Path:
        return self._existing_creds(PLATFORM)

    def system_creds(self) -> Path:
        return self._existing_creds(SYSTEM)

    def _existing_creds(self, role: str) -> Path:
        path = self._creds_path(role)
        if not path.exists():
            raise KeyError(f"no credentials for {role}: call prepare()/sync() with its plan first")
        return path

    def account_key(self, role: str) -> str:
        """Public key of the account `role` (`core`, `platform`, `plugin:<id>`, `system`)."""
        return jwt.public_key(self.keys.account(role))

    def account_roles(self) -> dict[str, str]:
        """Account key -> role for every current account: how the gateway
        turns the account key in a "Publish Violation" log line into a plugin."""
        roles = [SYSTEM, CORE, PLATFORM, *(plugin_account(i) for i in self.keys.plugin_ids())]
        return {self.account_key(role): role for role in roles}

    # -- staging (no network) -------------------------------------------------

    def prepare(self, plans: Sequence[SandboxPlan]) -> list[str]:
        """Bring keys, JWTs and creds on disk in line with `plans`.

        Returns the account roles the server does not hold yet (push order).
        Removed plugins lose their keys and creds here; their revoked accounts
        wait in removed.json until a live server confirms the deletion.
        """
        by_role = account_plans(plans)
        wanted_ids = {plan.id for plan in plans}
        self._retire([i for i in self.keys.plugin_ids() if i not in wanted_ids])
        stale = {role: plan for role, plan in by_role.items() if not self._unchanged(role, plan)}
        # Every file of this prepare is made durable by one flush at the end.
        with batched_writes(self.state):
            revocations: dict[str, dict[str, int]] = {}
            for role, plan in stale.items():
                superseded = self._issue_user(role, plan)
                if superseded:
                    revocations[role] = superseded
            for role, plan in stale.items():
                jti = self._issue_account(role, plan, revocations.get(role, {}))
                self._issued[role] = (plan, jti)
            self._issue_operator()
        return [role for role in self._push_order(by_role) if self._pending(role)]

    def _unchanged(self, role: str, plan: AccountPlan) -> bool:
        issued = self._issued.get(role)
        return (issued is not None and issued[0] == plan
                and self._account_path(role).exists() and self._creds_path(role).exists())

    def _issue_user(self, role: str, plan: AccountPlan) -> dict[str, int]:
        """(Re)write the creds if the user's claims changed. Returns the
        revocation the account then needs: the superseded JWT is revoked so a
        copy of the old creds (with the old permissions) stops working."""
        claims = user_claims(role, plan.user, plan, self.keys)
        path = self._creds_path(role)
        old = jwt.read_creds_jwt(path)
        old_claims = self._decode_or_none(old)
        if old_claims is not None and jwt.content(old_claims) == self._content(claims, self.account_key(role)):
            return {}
        private_dir(path.parent)
        token = self._sign(claims, issuer=self.keys.account(role))
        jwt.write_creds(path, token, self.keys.user(role).seed.decode("ascii"))
        if old_claims is None:
            return {}
        return {old_claims["sub"]: int(old_claims["iat"])}

    def _issue_account(self, role: str, plan: AccountPlan, new_revocations: dict[str, int]) -> str:
        """(Re)write the account JWT if its claims changed; returns its jti."""
        path = self._account_path(role)
        old_claims = self._decode_or_none(self._read(path))
        revocations = dict((old_claims or {}).get("nats", {}).get("revocations", {}))
        for key, at in new_revocations.items():
            revocations[key] = max(at, revocations.get(key, 0))
        claims = account_claims(role, plan, self.keys, revocations=revocations)
        operator_key = jwt.public_key(self.keys.operator())
        if old_claims is not None and jwt.content(old_claims) == self._content(claims, operator_key):
            return old_claims["jti"]
        private_dir(path.parent)
        token = self._sign(claims, issuer=self.keys.operator())
        write_private(path, token)
        return jwt.decode(token)["jti"]

    def _issue_operator(self) -> str:
        op = self.keys.operator()
        key = jwt.public_key(op)
        claims = Claims(role="operator", subject=key, name="precinct", nats=jwt.operator_nats(self.account_key(SYSTEM)))
        path = self.state / "operator.jwt"
        old = self._read(path)
        old_claims = self._decode_or_none(old)
        if old is not None and old_claims is not None and jwt.content(old_claims) == self._content(claims, key):
            return old
        token = self._sign(claims, issuer=op)
        write_private(path, token)
        return token

    def _retire(self, plugin_ids: Sequence[str]) -> None:
        """Revoke removed plugins: each account becomes a tombstone (no edges,
        no connections, every user revoked) that awaits deletion. removed.json
        is written once for all of them, and durably before any plugin's
        keys and creds are deleted (so a crash never loses a revocation)."""
        if not plugin_ids:
            return
        removed = self._removed()
        for plugin_id in plugin_ids:
            role = plugin_account(plugin_id)
            account = self.account_key(role)
            user = jwt.public_key(self.keys.user(role))
            # A revocation covers JWTs issued at or before its time; ours may run
            # ahead of the wall clock (IssueClock), so never revoke "before" them.
            at = max(int(time.time()), self.clock.last(user))
            tomb = tombstone_claims(role, account, {user: at, "*": at})
            removed[account] = {"role": role, "jwt": self._sign(tomb, issuer=self.keys.operator())}
        self._write_removed(removed)
        for plugin_id in plugin_ids:
            role = plugin_account(plugin_id)
            self._issued.pop(role, None)
            self._creds_path(role).unlink(missing_ok=True)
            self._account_path(role).unlink(missing_ok=True)
            self.keys.remove_plugin(plugin_id)

    # -- the server -----------------------------------------------------------

    @property
    def port(self) -> int:
        """The client port: as given, else a free one chosen once."""
        if self._port is None:
            self._port = free_port(self.host)
        return self._port

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def server_argv(self) -> list[str]:
        """Write the config and return the command that runs the server, for
        supervisors that manage the process themselves."""
        config = self.server_config()
        return [find_binary(), "-c", str(config.path)]

    def server_config(self, *, port: int | None = None, http_port: int | None = None) -> ServerConfig:
        """Write nats-server.conf preloading every current account JWT.

        Call it only to (re)start the server, never while it keeps running:
        accounts of plugins removed while no server confirmed their deletion
        are deleted from its resolver directory here, and what the config
        preloads becomes the baseline for diffs. `http_port=0` picks a free
        monitoring port; None turns monitoring off.
        """
        if port is not None:
            self._port = port
        if http_port is not None:
            self.http_port = http_port
        if not self._account_path(CORE).exists():
            self.prepare([])
        removed = list(self._removed())
        for account in removed:
            (self.resolver_dir / f"{account}.jwt").unlink(missing_ok=True)
        self._forget_removed(removed)
        preload = {self.account_key(role): self._preloadable(role) for role in self._current_roles()}
        config = write_config(
            self.config_path,
            operator_jwt=self._read(self.state / "operator.jwt") or self._issue_operator(),
            system_account=self.account_key(SYSTEM),
            resolver_dir=private_dir(self.resolver_dir),
            preload={k: v for k, v in preload.items() if v},
            log_file=self.log_path,
            port=self.port,
            http_port=self.http_port,
            host=self.host,
        )
        self.http_port = config.http_port
        self._pushed = {key: jwt.decode(token)["jti"] for key, token in config.preloaded.items()}
        return config

    def _preloadable(self, role: str) -> str | None:
        """Our JWT for `role`, re-signed if needed so the server takes it.

        The server applies a preload only if its `iat` is not older than the
        copy in its resolver directory (else it keeps that copy, silently).
        That copy can be newer after a state directory was restored from a
        backup; our content must win, so it gets a fresh, later `iat`.
        """
        path = self._account_path(role)
        ours = self._decode_or_none(self._read(path))
        if ours is None:
            return None
        theirs = self._decode_or_none(self._read(self.resolver_dir / f"{ours['sub']}.jwt"))
        if theirs is not None and theirs["jti"] != ours["jti"] and int(theirs["iat"]) >= int(ours["iat"]):
            # The clock has observed the resolver copy, so the new iat is later.
            issuer = self.keys.operator()
            token = jwt.encode(issuer=issuer, subject=ours["sub"], name=ours["name"],
                               nats=ours["nats"], iat=self.clock.next(ours["sub"]))
            write_private(path, token)
            self._issued.pop(role, None)  # a new jti: let prepare() look again
        return self._read(path)

    async def connect(self, url: str, timeout: float = 5.0) -> None:
        """Connect as the system user; sync() pushes through this connection."""
        if self._nc is not None:
            return
        self._nc = await nats.connect(
            url, user_credentials=str(self.system_creds()), name="precinct-identity",
            connect_timeout=timeout, max_reconnect_attempts=-1,
        )

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            await nc.close()

    async def sync(self, plans: Sequence[SandboxPlan], timeout: float = 5.0) -> SyncResult:
        """prepare(), then push what changed to the connected server: plugin
        accounts first (their exports must exist before core and platform
        import them), then platform and core, then revoke and delete removed
        plugins (after core and platform stopped importing from them)."""
        async with self._lock:
            pending = self.prepare(plans)
            removed = self._removed()
            removed_roles = tuple(sorted(entry["role"] for entry in removed.values()))
            if self._nc is None:
                return SyncResult(changed=tuple(pending), removed=removed_roles, live=False)
            for role in pending:
                token = self._read(self._account_path(role))
                assert token is not None
                await live.push(self._nc, token, timeout)
                self._pushed[self.account_key(role)] = jwt.decode(token)["jti"]
            done: list[str] = []
            try:
                for account, entry in sorted(removed.items()):
                    # The revocation alone already drops the plugin's connections
                    # and refuses new ones; deletion then frees the account.
                    await live.push(self._nc, entry["jwt"], timeout)
                    await live.delete(self._nc, self.keys.operator(), [account], int(time.time()), timeout)
                    done.append(account)
            finally:
                self._forget_removed(done)  # one write for all, even if one failed
            return SyncResult(changed=tuple(pending), removed=removed_roles, live=True)

    # -- helpers --------------------------------------------------------------

    def _current_roles(self) -> list[str]:
        return [SYSTEM, *(plugin_account(i) for i in self.keys.plugin_ids()), PLATFORM, CORE]

    def _push_order(self, by_role: dict[str, AccountPlan]) -> list[str]:
        plugins = sorted(r for r in by_role if r.startswith(PLUGIN_ROLE_PREFIX))
        return [SYSTEM, *plugins, PLATFORM, CORE]

    def _pending(self, role: str) -> bool:
        issued = self._issued.get(role)
        if issued is not None:
            return self._pushed.get(self.account_key(role)) != issued[1]
        token = self._read(self._account_path(role))
        return token is not None and self._pushed.get(self.account_key(role)) != jwt.decode(token)["jti"]

    def _sign(self, claims: Claims, issuer) -> str:
        return jwt.encode(
            issuer=issuer, subject=claims.subject, name=claims.name,
            nats=claims.nats, iat=self.clock.next(claims.subject),
        )

    @staticmethod
    def _content(claims: Claims, issuer_key: str) -> dict:
        """The content a freshly signed `claims` would have (see jwt.content)."""
        return {
            "iss": issuer_key, "name": claims.name, "sub": claims.subject,
            "nats": {**claims.nats, "version": jwt.CLAIMS_VERSION},
        }

    @staticmethod
    def _read(path: Path) -> str | None:
        try:
            return path.read_text().strip() or None
        except FileNotFoundError:
            return None

    @staticmethod
    def _decode_or_none(token: str | None) -> dict | None:
        if not token:
            return None
        try:
            return jwt.decode(token)
        except jwt.JWTError:
            return None  # damaged or foreign: re-issue rather than trust it

    def _removed(self) -> dict[str, dict[str, str]]:
        text = self._read(self._removed_path())
        return json.loads(text) if text else {}

    def _write_removed(self, removed: dict[str, dict[str, str]]) -> None:
        write_private(self._removed_path(), json.dumps(removed, indent=2, sort_keys=True) + "\n")

    def _forget_removed(self, accounts: Sequence[str]) -> None:
        if not accounts:
            return
        removed = self._removed()
        for account in accounts:
            removed.pop(account, None)
            self._pushed.pop(account, None)
        self._write_removed(removed)

    def _observe_issued(self) -> None:
        """Seed the clock with every `iat` we (or the server) hold, so nothing
        issued after a restart looks older than what came before."""
        files = [self.state / "operator.jwt", *self.state.glob("accounts/**/*.jwt"), *self.resolver_dir.glob("*.jwt")]
        tokens = [self._read(p) for p in files]
        tokens += [jwt.read_creds_jwt(p) for p in self.state.glob("creds/**/*.creds")]
        tokens += [entry["jwt"] for entry in self._removed().values()]
        for token in tokens:
            claims = self._decode_or_none(token)
            if claims is not None:
                self.clock.observe(claims["sub"], int(claims["iat"]))
