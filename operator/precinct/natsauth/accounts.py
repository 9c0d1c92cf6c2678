"""Sandbox plans -> account and user claims (unsigned).

The plan speaks in roles (`core`, `platform`, `plugin:<id>`); here roles
become account public keys and each edge becomes an export or import in the
account JWT, so the NATS server itself does all the mapping and refusing:

  - service exports are `Singleton` unless the plan says otherwise: the
    server forwards one answer per request through the import;
  - service imports publish on `local_subject` (Rosey's subject) and arrive at
    the exporter under the exported subject (which names the plugin);
  - stream imports with a prefix use `local_subject = <prefix>.<subject>`.
    Checked on 2.15.1: both `to: <prefix>` (deprecated in jwt v2, a literal
    prefix) and `local_subject` (a subject mapping, `*` and a trailing `>`
    carried over) deliver `plugin.<id>.<subject>`; we use the non-deprecated
    field.

Signing, `iat` and diffing are the caller's job (identity.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..plan.sandbox import CORE, PLATFORM, AccountPlan, Export, Import, SandboxPlan, UserPermissions, core_account, platform_account, plugin_account
from . import jwt
from .keys import SYSTEM, KeyStore

SYSTEM_ACCOUNT_NAME = "SYS"
UNLIMITED = -1

# A plugin may not connect as a leaf node: that would bridge its account to
# a server we do not control. (JetStream stays off too: no storage limits
# are written, and 0 means disabled.)
NO_LEAFNODES = 0


@dataclass(frozen=True)
class Claims:
    """One unsigned JWT: who it is about, its display name, its `nats` section."""

    role: str            # account role this is (account) or belongs to (user)
    subject: str         # public key it is about
    name: str
    nats: Mapping[str, Any] = field(hash=False)


def limits(plan: AccountPlan) -> dict[str, Any]:
    """Account-wide ceilings the server enforces; -1 is unlimited.

    `imports`/`exports` are the number of edges; an omitted field reads as
    0, which the server takes literally (no imports allowed), so every field
    is written out.
    """
    return {
        "conn": plan.max_connections,
        "subs": plan.max_subscriptions,
        "payload": plan.max_payload,
        "data": UNLIMITED,
        "imports": UNLIMITED,
        "exports": UNLIMITED,
        "wildcards": True,     # exports such as rosey.chat.*.send
        # Only the trusted, unlimited accounts may ever use leaf nodes.
        "leaf": UNLIMITED if plan.max_connections == UNLIMITED else NO_LEAFNODES,
    }


def export_claim(export: Export) -> dict[str, Any]:
    claim: dict[str, Any] = {"subject": export.subject, "type": export.kind}
    if export.kind == "service":
        claim["response_type"] = "Singleton" if export.singleton else "Stream"
    return claim


def import_claim(imp: Import, account_key: Callable[[str], str]) -> dict[str, Any]:
    claim: dict[str, Any] = {"account": account_key(imp.account), "subject": imp.subject, "type": imp.kind}
    if imp.kind == "service":
        if imp.prefix:
            raise ValueError(f"service import {imp.subject} has a prefix; only streams take one")
        if imp.local and imp.local != imp.subject:
            claim["local_subject"] = imp.local
    else:
        if imp.local and imp.prefix:
            raise ValueError(f"stream import {imp.subject} has both local and prefix")
        local = f"{imp.prefix}.{imp.subject}" if imp.prefix else imp.local
        if local and local != imp.subject:
            claim["local_subject"] = local
    return claim


def account_claims(
    role: str,
    plan: AccountPlan,
    keys: KeyStore,
    *,
    revocations: Mapping[str, int] | None = None,
) -> Claims:
    account_key = lambda r: jwt.public_key(keys.account(r))  # noqa: E731
    return Claims(
        role=role,
        subject=account_key(role),
        name=SYSTEM_ACCOUNT_NAME if role == SYSTEM else role,
        nats=jwt.account_nats(
            exports=[export_claim(e) for e in plan.exports],
            imports=[import_claim(i, account_key) for i in plan.imports],
            limits=limits(plan),
            revocations=revocations,
        ),
    )


def user_claims(role: str, perms: UserPermissions, plan: AccountPlan, keys: KeyStore) -> Claims:
    """The one user of account `role`. Per-connection limits mirror the
    account's so one connection cannot take all of them."""
    return Claims(
        role=role,
        subject=jwt.public_key(keys.user(role)),
        name=role,
        nats=jwt.user_nats(
            publish=list(perms.publish),
            subscribe=list(perms.subscribe),
            max_responses=perms.max_responses,
            subs=plan.max_subscriptions,
            payload=plan.max_payload,
        ),
    )


SYSTEM_PLAN = AccountPlan(
    exports=(),
    imports=(),
    user=UserPermissions(publish=(">",), subscribe=(">",), max_responses=0),
    max_connections=UNLIMITED, max_subscriptions=UNLIMITED, max_payload=UNLIMITED,
)


def tombstone_claims(role: str, account: str, revoke: Mapping[str, int]) -> Claims:
    """What a removed plugin's account becomes before it is deleted: no edges,
    no connections, and every user issued up to now revoked (`*`), so even a
    copied creds file is useless and live connections drop at once."""
    dead = AccountPlan(
        exports=(), imports=(), user=UserPermissions(publish=(), subscribe=()),
        max_connections=0, max_subscriptions=0, max_payload=0,
    )
    return Claims(
        role=role, subject=account, name=role,
        nats=jwt.account_nats(exports=[], imports=[], limits=limits(dead), revocations=revoke),
    )


def account_plans(plans: Sequence[SandboxPlan]) -> dict[str, AccountPlan]:
    """Every account that should exist for this set of plans, by role."""
    ids = [p.id for p in plans]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate plugin ids in plans: {sorted({i for i in ids if ids.count(i) > 1})}")
    by_role: dict[str, AccountPlan] = {
        SYSTEM: SYSTEM_PLAN,
        CORE: core_account(list(plans)),
        PLATFORM: platform_account(list(plans)),
    }
    for plan in plans:
        by_role[plugin_account(plan.id)] = plan.account
    return by_role
