"""Rosey's `manifest.yaml` -> Precinct's `plugin.yaml` fields.

Rosey's planned `.roseyplug` manifest (its Sprint 12 spec) describes the same
plugin with different names. The mapping, field by field:

| Rosey `manifest.yaml`        | Precinct `plugin.yaml`                                   |
|------------------------------|----------------------------------------------------------|
| name, version, author, description | same                                               |
| entry_point (`plugin.py`) + main_class | `entrypoint: plugin:MainClass`                 |
| permissions: read_messages, send_messages, http_requests | same                        |
| permissions: database_access | database_read + database_write                            |
| permissions: database_migrations | database_write (the platform applies migrations)      |
| permissions: file_read / file_write | file_system_read / file_system_write               |
| permissions: websocket_client | http_requests (the same egress fence)                    |
| permissions: config_read, temp_files, read_media | dropped: every plugin has them            |
| permissions: control_media, config_write, bot_control, plugin_management, system_commands | **refused**: no sandboxed equivalent |
| resources.cpu_limit, memory_limit | same (`100M` means 10^8 bytes, as in Kubernetes)     |
| resources.storage_limit      | resources.disk_limit                                      |
| config_schema                | same; its `default`s become `config`                      |
| dependencies                 | same: the bundle's wheels must cover them (spec/requirements.py) |
| python_requires              | dropped: the runner's Python decides                      |
| display_name, homepage, license, tags | dropped (informational)                          |

Precinct's own fields (`commands`, `command_groups`, `subject_namespace`, `events`, `config`,
`resources.pids_limit`, `resources.rate_limits`) are accepted in a
`manifest.yaml` too, since Rosey declares commands in code, not in its
manifest: without `commands` the dispatcher routes nothing to the plugin.
"""

from __future__ import annotations

from typing import Any

PERMISSION_MAP: dict[str, tuple[str, ...]] = {
    "read_messages": ("read_messages",),
    "send_messages": ("send_messages",),
    "http_requests": ("http_requests",),
    "websocket_client": ("http_requests",),
    "database_access": ("database_read", "database_write"),
    "database_migrations": ("database_write",),
    "database_read": ("database_read",),
    "database_write": ("database_write",),
    "file_read": ("file_system_read",),
    "file_write": ("file_system_write",),
    "file_system_read": ("file_system_read",),
    "file_system_write": ("file_system_write",),
    "config_read": (),
    "temp_files": (),
    "read_media": (),
}
REFUSED = ("control_media", "config_write", "bot_control", "plugin_management", "system_commands")
PASS_THROUGH = ("name", "version", "author", "description", "commands", "command_groups", "subject_namespace",
                "events", "config", "config_schema", "entrypoint", "dependencies")
DROPPED = ("display_name", "homepage", "license", "tags", "python_requires",
           "entry_point", "main_class", "permissions", "resources")


class RoseyManifestError(ValueError):
    pass


def to_precinct(data: dict[str, Any]) -> dict[str, Any]:
    """A Rosey manifest mapping -> a plugin.yaml mapping (not yet validated)."""
    out: dict[str, Any] = {k: data[k] for k in PASS_THROUGH if k in data}
    unknown = sorted(k for k in data if k not in PASS_THROUGH and k not in DROPPED)
    if unknown:
        raise RoseyManifestError(f"unknown manifest.yaml field(s): {', '.join(unknown)}")
    if "entrypoint" not in out and ("main_class" in data or "entry_point" in data):
        module = str(data.get("entry_point") or "plugin.py")
        if not module.endswith(".py") or "/" in module or "\\" in module:
            raise RoseyManifestError(f"entry_point {module!r} must be a .py file at the top of the bundle")
        if "main_class" in data:
            out["entrypoint"] = f"{module[:-3]}:{data['main_class']}"
    perms: list[str] = []
    for perm in data.get("permissions") or []:
        if perm in REFUSED:
            raise RoseyManifestError(
                f"permission {perm!r} has no sandboxed equivalent in Precinct; remove it from manifest.yaml")
        if perm not in PERMISSION_MAP:
            raise RoseyManifestError(f"unknown Rosey permission {perm!r}")
        for mapped in PERMISSION_MAP[perm]:
            if mapped not in perms:
                perms.append(mapped)
    if perms:
        out["permissions"] = perms
    resources = data.get("resources")
    if isinstance(resources, dict):
        res = {k: v for k, v in resources.items() if k != "storage_limit"}
        if "storage_limit" in resources:
            res["disk_limit"] = resources["storage_limit"]
        out["resources"] = res
    elif resources is not None:
        raise RoseyManifestError("resources: expected a mapping")
    schema = data.get("config_schema")
    if "config" not in out and isinstance(schema, dict) and isinstance(schema.get("properties"), dict):
        defaults = {k: v["default"] for k, v in schema["properties"].items() if isinstance(v, dict) and "default" in v}
        if defaults:
            out["config"] = defaults
    return out
