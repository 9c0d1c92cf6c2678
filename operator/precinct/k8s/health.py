"""The operator's health for Kubernetes probes, through kopf's liveness endpoint.

`precinct operator --liveness http://0.0.0.0:8080/healthz` makes kopf serve
that URL (kopf.operator's liveness_endpoint). Each request runs the probe
handlers below (kopf caches the answer for 10 s) and answers

  200  {"precinct": {"plugins": N, "observing": N, "violations": "subscribed"}}
       logged in to the API server, the background tasks alive
  500  not logged in yet, or a background task (the violation subscription,
       the services' metrics poll) died: restarting the Pod is the cure

The request is served by the operator's own event loop, so an answer at all
also says the loop is not stuck. What the answer does not depend on: NATS
being reachable (plugins keep running without it; CredentialsReady says so),
which is why a NATS outage never restarts the operator.

The chart points its startup, readiness and liveness probes at this endpoint
(charts/precinct/templates/operator.yaml).
"""

from __future__ import annotations

from typing import Any

import kopf


def register(registry: kopf.OperatorRegistry, holder: dict[str, Any]) -> None:
    """Attach the probe handler; `holder["runtime"]` is set at login (operator.py)."""

    @kopf.on.probe(id="precinct", registry=registry)
    def precinct(**_: Any) -> dict[str, Any]:
        runtime = holder.get("runtime")
        if runtime is None:
            # Permanent: kopf would otherwise retry the handler inside the probe request.
            raise kopf.PermanentError("not logged in to the Kubernetes API yet")
        for task in runtime.background:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise kopf.PermanentError(f"background task {task.get_name()} died: {task.exception()!r}")
        subscribed = getattr(runtime, "violations_subscribed", None)
        return {
            "plugins": len(runtime.ids),
            "observing": runtime.observing,
            "violations": "off" if subscribed is None else "subscribed" if subscribed else "waiting for NATS",
        }
