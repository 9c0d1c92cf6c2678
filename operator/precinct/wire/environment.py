"""Every PRECINCT_* environment variable, named once.

The control plane reads its variables through precinct/settings.py (typed,
validated by pydantic-settings, read when a command runs, never at import);
`python -m precinct.settings` prints the table in docs/configuration.md.
Variables the platform *sets* for others are named here too.
"""

PREFIX = "PRECINCT_"

# -- read by `precinct up` and the single-host runtime (settings.HostSettings) --------
STATE_DIR = "PRECINCT_STATE_DIR"
WHEEL_INDEX = "PRECINCT_WHEEL_INDEX"
RUNNER_PYTHON = "PRECINCT_RUNNER_PYTHON"
RUNNER_ENV = "PRECINCT_RUNNER_ENV"
RUNNER_SOURCE = "PRECINCT_RUNNER_SOURCE"
CONFINE_DISABLE = "PRECINCT_CONFINE_DISABLE"
EGRESS_TEST_ALLOW = "PRECINCT_EGRESS_TEST_ALLOW"
UID_BASE = "PRECINCT_UID_BASE"
UID_COUNT = "PRECINCT_UID_COUNT"
UID_TABLE = "PRECINCT_UID_TABLE"

# -- read by `precinct operator` (settings.OperatorSettings) -----------------------------
NATS_URL = "PRECINCT_NATS_URL"
OPERATOR_STATE = "PRECINCT_OPERATOR_STATE"
OPERATOR_SETTINGS = "PRECINCT_OPERATOR_SETTINGS"
OPERATOR_METRICS_PORT = "PRECINCT_OPERATOR_METRICS_PORT"
OPERATOR_LIVENESS = "PRECINCT_OPERATOR_LIVENESS"
FLEET_CONFIGMAP = "PRECINCT_FLEET_CONFIGMAP"
FLEET_SHARDS = "PRECINCT_FLEET_SHARDS"

# -- read by the marketplace commands (settings.MarketSettings) -------------------------
KEY_PASSPHRASE = "PRECINCT_KEY_PASSPHRASE"  # nosec B105 - the name of a variable, not its value
INDEX_ROOT = "PRECINCT_INDEX_ROOT"
INDEX_ROOT_JSON = "PRECINCT_INDEX_ROOT_JSON"
MARKET_LOG = "PRECINCT_MARKET_LOG"

# -- set by the platform for a plugin --------------------------------------------------
DATA_DIR = "PRECINCT_DATA_DIR"          # the plugin's data dir, inside its sandbox
NATS_FD = "PRECINCT_NATS_FD"            # the runner's channel for NATS sockets (confine/broker.py)
DATA_WAIT = "PRECINCT_DATA_WAIT"        # "1": initialize once told the data dir is writable (confine/host.py)

# -- the plugin runner's options (plugins/runner reads them itself: its own copy in
# precinct_runner/wire.py, checked equal by tests/test_wire.py) --------------------------
RUNNER_OPTIONS = ("PLUGIN_DIR", "PLUGIN_ID", "INSTANCE", "SERVER", "CREDS", "NATS_FD", "DEPS", "ENTRYPOINT",
                  "CONFIG", "CONFIG_JSON", "COMMANDS", "EXPORTS", "CONNECT_TIMEOUT", "INIT_TIMEOUT", "SHUTDOWN_TIMEOUT",
                  "LOG_LEVEL", "DATA_WAIT")
