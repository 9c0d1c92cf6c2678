"""The fleet ConfigMap: fleet.json for the gateway and the storage service.

On a single host the supervisor writes `<state>/fleet.json`; in a cluster the
trusted services run in other Pods, so the operator publishes the same
document (plugin id -> account public key and sandbox plan; nothing secret)
into one ConfigMap that the Helm chart mounts into them. The kubelet
refreshes the mounted file (within about a minute) and `FleetFile` reloads
it when its mtime or inode changes.

Enabled by `$PRECINCT_FLEET_CONFIGMAP=<namespace>/<name>` (the chart sets
it); written only when the document changed; a failure is logged, never
fails a reconcile (the next one writes it again).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from ..plan.sandbox import SandboxPlan, plugin_account

ENV = "PRECINCT_FLEET_CONFIGMAP"
KEY = "fleet.json"

log = logging.getLogger("precinct.operator")
_written: dict[str, str] = {}      # "<ns>/<name>" -> digest of the last document written


def target() -> tuple[str, str] | None:
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    namespace, _, name = value.partition("/")
    return (namespace, name) if namespace and name else None


def document(plans: Sequence[SandboxPlan], account_key: Any) -> str:
    fleet = {plan.id: {"folder": "", "account_key": account_key(plugin_account(plan.id)), "plan": plan.to_dict()}
             for plan in plans}
    return json.dumps(fleet, sort_keys=True, indent=1) + "\n"


async def publish(api: Any, identity: Any, plans: Sequence[SandboxPlan]) -> bool:
    """Apply the ConfigMap if the fleet changed; True when written."""
    where = target()
    if where is None:
        return False
    try:
        text = document(plans, identity.account_key)
        digest = hashlib.sha256(text.encode()).hexdigest()
        if _written.get("/".join(where)) == digest:
            return False
        await api.apply({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"namespace": where[0], "name": where[1]}, "data": {KEY: text}})
        _written["/".join(where)] = digest
        return True
    except Exception as exc:  # noqa: BLE001 - the next reconcile retries
        log.warning("could not publish the fleet to ConfigMap %s/%s: %s", *where, exc)
        return False
