"""Kubernetes: the BotPlugin CRD and the operator that runs plugins as Pods.

Modules, one job each:
  crd        the CustomResourceDefinition, generated from the spec model
  render     BotPlugin -> ServiceAccount, Secret, ConfigMap, NetworkPolicy,
             Deployment (pure; shared by `precinct render` and the operator)
  status     Deployment and Pod observations -> kstatus conditions (pure)
  client     API calls through kubernetes_asyncio (server-side apply, merge
             patches, pagination, retries, token refresh)
  reconcile  the operator's logic without kopf: reconcile, observe, finalize
  handlers   kopf wiring: indexes, create/update/resume, delete, event-driven observe
  ladder     the suspend ladder: violation events -> warn, rollout restart, suspend; resume
  health     the probe behind kopf's liveness endpoint (the Pod's probes)
  operator   `precinct operator`: kopf settings, login, standalone run
  claims     the fleet's claims and compiled plans, kept current by BotPlugin events
  credentials  the fleet's NATS accounts (natsauth.Identity, one per operator)
  fleetmap   the fleet ConfigMaps the gateway and storage read (no secrets)
  bundles    a bundle release verified against the index before any Pod starts
  metrics    the operator's Prometheus metrics
  status_writer  a BotPlugin's status, and an Event per condition transition
  violations the gateway's violation reports -> BotPlugin status

The bodies of `precinct render` and `precinct operator` are in cli/kubernetes.py.

See docs/operator.md.
"""
