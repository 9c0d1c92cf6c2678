"""NATS identity: one account per plugin, enforced by the NATS server.

Modules, one job each:
  files     owner-only directories and atomic 0600 writes
  jwt       NATS v2 JWT encoding/decoding, strictly increasing `iat`, creds files
  keys      the nkey store (operator, accounts, users), stable across restarts
  accounts  sandbox plans -> account and user claims
  budget    the fleet ceiling: how many plugins the shared accounts' JWTs hold
  server    nats-server config, and the server as a child process
  live      pushing and deleting account JWTs on a running server ($SYS)
  identity  `Identity`: what a supervisor calls

See docs/nats.md.
"""

from .identity import Identity, SyncResult
from .live import ClaimsError
from .server import NatsServer, NatsServerError, ServerConfig, find_binary

__all__ = ["ClaimsError", "Identity", "NatsServer", "NatsServerError", "ServerConfig", "SyncResult", "find_binary"]
