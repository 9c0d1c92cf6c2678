"""NATS message headers, defined once."""

# Stamped by the gateway on what it relays for a plugin; the dispatcher and
# core read the sender from it, never from the payload.
PLUGIN = "Precinct-Plugin"
# Added by nats-server to a request that crossed accounts (the requester's account).
REQUEST_INFO = "Nats-Request-Info"
