"""NATS message headers, defined once."""

# Stamped by the gateway on what it relays for a plugin; the dispatcher and
# core read the sender from it, never from the payload.
PLUGIN = "Precinct-Plugin"
# Added by nats-server to a request that crossed accounts (the requester's account).
REQUEST_INFO = "Nats-Request-Info"
# Stamped by the gateway on a call it passes to a callee: the caller's plugin id
# and subject namespace. Whatever the caller put in these is dropped first.
CALLER = "Precinct-Caller"
CALLER_NAMESPACE = "Precinct-Caller-Namespace"
