"""The few platform names the runner needs, copied here on purpose.

The runner is a separate, untrusted distribution installed into every
sandbox; it must not import the control plane. tests/test_wire.py proves
these equal the platform's (precinct/wire/subjects.py, headers.py and environment.py).
"""

COMMAND_ROOT = "rosey.command"
ENV_PREFIX = "PRECINCT_"


def ping(plugin_id: str, instance: str) -> str:
    return f"precinct.ping.{plugin_id}.{instance}"


def config(plugin_id: str, instance: str) -> str:
    return f"precinct.config.{plugin_id}.{instance}"


def call(target: str) -> str:
    return f"precinct.call.{target}"


def export(plugin_id: str, action: str) -> str:
    return f"precinct.export.{plugin_id}.{action}"


# Headers the gateway stamps on a call (precinct/wire/headers.py).
CALLER = "Precinct-Caller"
CALLER_NAMESPACE = "Precinct-Caller-Namespace"


def queue_group(plugin_id: str) -> str:
    return f"precinct.{plugin_id}"


# Every option's variable (PRECINCT_<NAME>), for `--help` and the check above.
OPTION_VARIABLES = ("PLUGIN_DIR", "PLUGIN_ID", "INSTANCE", "SERVER", "CREDS", "NATS_FD", "DEPS", "ENTRYPOINT",
                    "CONFIG", "CONFIG_JSON", "COMMANDS", "EXPORTS", "CONNECT_TIMEOUT", "INIT_TIMEOUT", "SHUTDOWN_TIMEOUT",
                    "LOG_LEVEL", "DATA_WAIT")
