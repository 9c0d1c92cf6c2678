"""The plugin spec: the one model both runtimes compile from.

A manifest (`plugin.yaml`, snake_case) and a `BotPlugin` custom resource's
`spec` (camelCase) are the same model read two ways: every field has a
camelCase alias and the loader chooses which spelling it accepts, so the two
forms can never drift apart. The CRD schema in `crds/` is generated from here.

Every omitted limit has a documented default (docs/manifest.md); the numbers
follow Rosey's own planning documents where they give one.
"""

from __future__ import annotations

import enum
import json
import re
from typing import Annotated, Any

import jsonschema
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from ..wire import subjects as wire
from . import quantity
from . import requirements as reqs
from .identity import (
    ACTION,
    CHAT_WORD,
    MAX_ACTION,
    MAX_TOKEN,
    RESERVED_TOKENS,
    TOKEN,
    TOKEN_PATTERN,
    IdError,
    arg_count_range,
    canonical_id,
)


DEFAULT_CPU = "500m"          # Rosey: 50 % of one core
DEFAULT_MEMORY = "256Mi"      # Rosey: 256 MB
DEFAULT_PIDS = 64             # threads count against pids too; Python needs a handful
DEFAULT_DISK = "64Mi"         # data dir and storage database, together
DEFAULT_MESSAGES_PER_SECOND = 10.0
DEFAULT_DB_QUERIES_PER_SECOND = 10.0
DEFAULT_CALLS_PER_SECOND = 5.0
MIN_MEMORY = 32 * 2**20       # below this the Python runner itself cannot start
MAX_CPU_MILLICORES = 64_000

# Bounds on what ends up in a NATS JWT, a subject or a file (docs/manifest.md#bounds).
# Each command and each namespace becomes an export in the plugin's account and
# an import in the shared core or platform account, so these keep one plugin's
# share of those JWTs to a few KiB (natsauth/budget.py checks the fleet's sum).
# Rosey's own plugins use one namespace and a handful of commands.
MAX_COMMANDS = 64
MAX_COMMAND_NAMESPACES = 4
MAX_EVENT_ROOTS = 8
# Each export is a service in the plugin's account and an import in platform's;
# each call an import in the plugin's account from platform's (docs/secure-plugins.md#calls-between-plugins).
MAX_EXPORTS = 16
MAX_CALLS = 16
MAX_CONFIG_BYTES = 64 * 1024          # config.json as written for the runner
MAX_CONFIG_SCHEMA_BYTES = 64 * 1024


class Permission(str, enum.Enum):
    """What a plugin may ask for; docs/permissions.md (generated from the sandbox plan) says what each means."""

    read_messages = "read_messages"
    send_messages = "send_messages"
    database_read = "database_read"
    database_write = "database_write"
    http_requests = "http_requests"
    file_system_read = "file_system_read"
    file_system_write = "file_system_write"
    # Privileged and never implied: read-only observation of the whole fleet's
    # chat and bot events (Rosey's inspector). Tools warn wherever it is granted
    # (plan/sandbox.py: observer_warning).
    observe_chat_and_events = "observe_chat_and_events"


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",
        frozen=True,
        use_enum_values=False,
    )


def _token(value: str) -> str:
    if len(value) > MAX_TOKEN:
        raise ValueError(f"{value[:20]!r}... is {len(value)} characters; a NATS token here may have at most {MAX_TOKEN}")
    if not TOKEN.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid NATS token: use lowercase letters, digits and '-' "
            f"({TOKEN_PATTERN})"
        )
    if value in RESERVED_TOKENS:
        raise ValueError(f"{value!r} is reserved for the platform")
    return value


# The pattern is repeated into the JSON schema so the API server checks it too.
Token = Annotated[str, StringConstraints(max_length=MAX_TOKEN), AfterValidator(_token), Field(json_schema_extra={"pattern": TOKEN_PATTERN})]


def _check_quantity(kind: str, parse):
    def check(value: Any) -> Any:
        try:
            amount = parse(value)
        except quantity.QuantityError as exc:
            raise ValueError(str(exc)) from None
        if amount <= 0:
            raise ValueError(f"{kind} must be greater than zero, got {value!r}")
        return value

    return check


CpuQuantity = Annotated[
    int | float | str,
    AfterValidator(_check_quantity("cpu_limit", quantity.to_millicores)),
    Field(json_schema_extra={"x-kubernetes-int-or-string": True}),
]
ByteQuantity = Annotated[
    int | str,
    AfterValidator(_check_quantity("size", quantity.to_bytes)),
    Field(json_schema_extra={"x-kubernetes-int-or-string": True}),
]


class RateLimits(_Model):
    """Enforced by the gateway (messages) and the storage service (queries)."""

    messages_per_second: float = Field(
        DEFAULT_MESSAGES_PER_SECOND, gt=0, le=10_000,
        description="Chat messages and events a plugin may send per second (token bucket).",
    )
    database_queries_per_second: float = Field(
        DEFAULT_DB_QUERIES_PER_SECOND, gt=0, le=10_000,
        description="Storage requests per second; excess is answered with a rate-limit error.",
    )
    calls_per_second: float = Field(
        DEFAULT_CALLS_PER_SECOND, gt=0, le=10_000,
        description="Calls to other plugins' exports per second (gateway token bucket, burst one second's worth); "
                    "excess is refused and reported.",
    )
    burst: int | None = Field(
        None, ge=1, le=100_000,
        description="Bucket size; default one second's worth of messages_per_second.",
    )

    @property
    def effective_burst(self) -> int:
        return self.burst if self.burst is not None else max(1, int(self.messages_per_second + 0.999))


# -- command groups: one chat word with subcommands (Rosey's chat syntax) ------

Target = Annotated[str, StringConstraints(max_length=128)]
# The dispatcher answers `!help` itself with the words the fleet serves.
RESERVED_CHAT_WORDS = frozenset({"help"})


def _target_problems(label: str, target: Any) -> list[str]:
    """Problems with one '<namespace>.<action>' command target."""
    match = _COMMAND_TARGET.fullmatch(target) if isinstance(target, str) else None
    if not match:
        return [f"{label}: {str(target)[:80]!r} must be '<namespace>.<action>', e.g. dice.roll"]
    problems = []
    try:
        _token(match["ns"])
    except ValueError as exc:
        problems.append(f"{label}: namespace {exc}")
    if not ACTION.fullmatch(match["action"]) or len(match["action"]) > 64:
        problems.append(f"{label}: action {match['action']!r} must be 1-64 letters, digits, '-' or '_'")
    return problems


def _word_problem(word: Any, what: str = "chat word") -> str | None:
    if not isinstance(word, str) or not CHAT_WORD.fullmatch(word):
        return f"{what} {str(word)[:40]!r} must be 1-32 lowercase letters, digits, '-' or '_'"
    if word in RESERVED_CHAT_WORDS:
        return f"{what} {word!r} is reserved: the dispatcher answers !{word} with the commands the fleet serves"
    return None


MAX_SUBCOMMANDS = 32
MAX_ARG_RULES = 8
MAX_ARG_COUNT = 16
MAX_WORD_ALIASES = 8
MAX_COMMAND_GROUPS = 16
MAX_CHAT_WORDS = 256
# Each distinct command subject is an export in the plugin's NATS account and
# an import in core's: bounded across plain words and groups together.
MAX_COMMAND_SUBJECTS = 64


# Whatever follows the subcommand (or, for a default action, the chat word)
# becomes the request's `args`, as Rosey's plugins expect: `!countdown alerts
# movie 15,5` sends "movie 15,5" to countdown.alerts, `!countdown movie` sends
# "movie" to the one-word default (check), `!countdown movie 2026-12-01 20:00`
# the whole line to the two-or-more default (create).
class CommandGroup(_Model):
    """One chat word with subcommands and default actions chosen by the number of words."""

    subcommands: dict[str, Target] = Field(
        default_factory=dict, max_length=MAX_SUBCOMMANDS,
        description="First word after the chat word -> '<namespace>.<action>'; the rest of the line is args. "
        "Two subcommands with the same target are aliases of each other.",
    )
    default: dict[str, Target] = Field(
        default_factory=dict, max_length=MAX_ARG_RULES,
        description="When the first word is no subcommand: number of words after the chat word "
        "('0', '1', ... or '2+' for two or more) -> '<namespace>.<action>'; the whole rest of the line is args.",
    )
    aliases: list[Annotated[str, StringConstraints(max_length=32)]] = Field(
        default_factory=list, max_length=MAX_WORD_ALIASES,
        description="Other chat words for the same command, e.g. cd for countdown.",
    )
    description: Annotated[str, StringConstraints(max_length=200)] | None = Field(
        None, description="One line for !help."
    )

    @field_validator("subcommands")
    @classmethod
    def _subcommands(cls, value: dict[str, str]) -> dict[str, str]:
        problems = []
        for sub, target in value.items():
            problem = _word_problem(sub, "subcommand")
            problems += [problem] if problem else _target_problems(sub, target)
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("default")
    @classmethod
    def _default(cls, value: dict[str, str]) -> dict[str, str]:
        problems, ranges = [], []
        for key, target in value.items():
            try:
                low, high = arg_count_range(key)
            except ValueError:
                problems.append(f"default: {key!r} must be a number of words like '1' or '2+'")
                continue
            if low > MAX_ARG_COUNT:
                problems.append(f"default: {key!r}: at most {MAX_ARG_COUNT} words")
                continue
            problems += _target_problems(f"default {key}", target)
            for other_key, (o_low, o_high) in ranges:
                if (high is None or high >= o_low) and (o_high is None or o_high >= low):
                    problems.append(f"default: {key!r} and {other_key!r} both match {max(low, o_low)} word(s)")
            ranges.append((key, (low, high)))
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, value: list[str]) -> list[str]:
        problems = [p for p in (_word_problem(a, "alias") for a in value) if p]
        if len(set(value)) != len(value):
            problems.append("an alias is listed twice")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @model_validator(mode="after")
    def _routes_something(self) -> "CommandGroup":
        if not self.subcommands and not self.default:
            raise ValueError("a command group needs subcommands, a default action, or both")
        return self

    def targets(self) -> list[str]:
        return [*self.subcommands.values(), *self.default.values()]

    def route(self) -> dict[str, Any]:
        """What the dispatcher needs: full subjects, aliases grouped by target."""
        return {
            "subcommands": {sub: wire.command(t) for sub, t in sorted(self.subcommands.items())},
            "default": {key: wire.command(t) for key, t in sorted(self.default.items())},
            **({"description": self.description} if self.description else {}),
        }


# Larger than any one plugin's memory or data could really be: such a number
# is a typo (99999Ti), and the kernel or Kubernetes would refuse it at launch,
# so validate says so first.
MAX_BYTES_LIMIT = 2**40          # 1Ti


def _byte_ceiling(field: str, value: Any) -> Any:
    if quantity.to_bytes(value) > MAX_BYTES_LIMIT:
        raise ValueError(f"{field} must be at most 1Ti, got {value!r}")
    return value


class Resources(_Model):
    """Kernel (single host) or Kubernetes limits; quantities use Kubernetes units."""

    cpu_limit: CpuQuantity = Field(DEFAULT_CPU, description="CPU cores: 0.25 or 250m.")
    memory_limit: ByteQuantity = Field(DEFAULT_MEMORY, description="Memory: 100M = 10^8 bytes, 100Mi = 100*2^20.")
    pids_limit: int = Field(DEFAULT_PIDS, ge=8, le=4096, description="Processes and threads.")
    disk_limit: ByteQuantity = Field(DEFAULT_DISK, description="Data dir and database quota.")
    rate_limits: RateLimits = Field(default_factory=RateLimits)

    @field_validator("cpu_limit")
    @classmethod
    def _cpu_range(cls, value: Any) -> Any:
        if quantity.to_millicores(value) > MAX_CPU_MILLICORES:
            raise ValueError(f"cpu_limit must be at most {MAX_CPU_MILLICORES // 1000} cores")
        return value

    @field_validator("memory_limit")
    @classmethod
    def _memory_floor(cls, value: Any) -> Any:
        if quantity.to_bytes(value) < MIN_MEMORY:
            raise ValueError(f"memory_limit must be at least 32Mi (the runner alone needs that), got {value!r}")
        return _byte_ceiling("memory_limit", value)

    @field_validator("disk_limit")
    @classmethod
    def _disk_ceiling(cls, value: Any) -> Any:
        return _byte_ceiling("disk_limit", value)

    @property
    def cpu_millicores(self) -> int:
        return quantity.to_millicores(self.cpu_limit)

    @property
    def memory_bytes(self) -> int:
        return quantity.to_bytes(self.memory_limit)

    @property
    def disk_bytes(self) -> int:
        return quantity.to_bytes(self.disk_limit)


_COMMAND_TARGET = re.compile(r"(?P<ns>[^.]+)\.(?P<action>[^.]+)")   # used with fullmatch


def _check_json_size(field: str, value: Any, limit: int) -> None:
    """The field as JSON (how it is written to disk and into Kubernetes objects)
    must fit `limit` bytes."""
    try:
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    except (TypeError, ValueError) as exc:  # e.g. YAML dates: not JSON
        raise ValueError(f"{field} must be plain JSON data (strings, numbers, booleans, lists, mappings): {exc}") from None
    except RecursionError:
        raise ValueError(f"{field} is nested too deeply") from None
    if size > limit:
        raise ValueError(f"{field} is {size:,} bytes as JSON; at most {limit:,} bytes")


class PluginSpec(_Model):
    """Fields shared by `plugin.yaml` and the `BotPlugin` spec."""

    version: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9.+_-]*$")] = Field(
        ..., description="The plugin's version, e.g. 1.0.0."
    )
    author: Annotated[str, StringConstraints(max_length=200)] | None = None
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    subject_namespace: Token | None = Field(
        None, description="Rosey's NAMESPACE: storage subjects and default event root. Default: the plugin id."
    )
    entrypoint: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$", max_length=200)] | None = Field(
        None, description="module:Class in the plugin folder; default: the one plugin class in plugin.py."
    )
    # Chat words (the keys) are 1-32 characters, checked by _commands.
    commands: dict[str, Annotated[str, StringConstraints(max_length=MAX_TOKEN + 1 + MAX_ACTION)]] = Field(
        default_factory=dict,
        description="Chat word -> '<namespace>.<action>', served on rosey.command.<namespace>.<action>.",
        max_length=MAX_COMMANDS,
    )
    command_groups: dict[str, CommandGroup] = Field(
        default_factory=dict, max_length=MAX_COMMAND_GROUPS,
        description="Chat word -> subcommands and default actions: `!countdown list`, `!countdown movie 20:00`.",
    )
    events: list[Token] = Field(default_factory=list, max_length=MAX_EVENT_ROOTS, description="Extra event roots.")
    exports: list[Annotated[str, StringConstraints(max_length=MAX_ACTION)]] = Field(
        default_factory=list, max_length=MAX_EXPORTS,
        description="Actions other plugins may call ('lookup'); a caller names one as "
                    "'<this plugin's subject namespace>.<action>' in its calls.",
    )
    calls: list[Annotated[str, StringConstraints(max_length=MAX_TOKEN + 1 + MAX_ACTION)]] = Field(
        default_factory=list, max_length=MAX_CALLS,
        description="Other plugins' exported actions this plugin calls, as '<their subject namespace>.<action>' "
                    "(quotes.lookup); every call passes the gateway, which names the caller to the callee.",
    )
    dependencies: list[Annotated[str, StringConstraints(max_length=reqs.MAX_LENGTH)]] = Field(
        default_factory=list, max_length=reqs.MAX_DEPENDENCIES,
        description="Python packages the plugin imports, as requirements ('httpx>=0.27'): installed as wheels "
                    "only, from the operator's wheel index, into the plugin's own environment.",
    )
    permissions: list[Permission] = Field(default_factory=list, max_length=len(Permission),
                                          description="Grants; see docs/permissions.md.")
    resources: Resources = Field(default_factory=Resources)
    config: dict[str, Any] = Field(default_factory=dict, description="Passed to the plugin's constructor.")
    config_schema: dict[str, Any] | None = Field(None, description="JSON Schema the config must satisfy.")

    @field_validator("dependencies")
    @classmethod
    def _dependencies(cls, value: list[str]) -> list[str]:
        problems = reqs.check(value)
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("exports")
    @classmethod
    def _exports(cls, value: list[str]) -> list[str]:
        problems = [f"export {str(a)[:40]!r} must be 1-{MAX_ACTION} letters, digits, '-' or '_' (an action, "
                    f"not '<namespace>.<action>': callers add this plugin's subject namespace)"
                    for a in value if not ACTION.fullmatch(a)]
        if len(set(value)) != len(value):
            problems.append("an export is listed twice")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("calls")
    @classmethod
    def _calls(cls, value: list[str]) -> list[str]:
        problems = [p for target in value for p in _target_problems("calls", target)]
        if len(set(value)) != len(value):
            problems.append("a call is listed twice")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("commands", mode="before")
    @classmethod
    def _command_count(cls, value: Any) -> Any:
        # Counted before anything else, so a huge table gets one line, not one per entry.
        if isinstance(value, dict) and len(value) > MAX_COMMANDS:
            raise ValueError(f"{len(value)} commands; a plugin may declare at most {MAX_COMMANDS}")
        return value

    @field_validator("commands")
    @classmethod
    def _commands(cls, value: dict[str, str]) -> dict[str, str]:
        problems = []
        namespaces = set()
        for word, target in value.items():
            if not CHAT_WORD.fullmatch(word):
                problems.append(f"chat word {word[:40]!r} must be 1-32 lowercase letters, digits, '-' or '_'")
                continue
            match = _COMMAND_TARGET.fullmatch(target) if isinstance(target, str) else None
            if not match:
                problems.append(f"{word}: {str(target)[:80]!r} must be '<namespace>.<action>', e.g. dice.roll")
                continue
            try:
                _token(match["ns"])
                namespaces.add(match["ns"])
            except ValueError as exc:
                problems.append(f"{word}: namespace {exc}")
            action = match["action"]
            if len(action) > MAX_ACTION:
                problems.append(f"{word}: action {action[:20]!r}... is {len(action)} characters; at most {MAX_ACTION}")
            elif not ACTION.fullmatch(action):
                problems.append(f"{word}: action {action!r} must be letters, digits, '-' or '_'")
            if len(problems) >= 10:
                problems.append("(further commands not checked)")
                break
        if len(namespaces) > MAX_COMMAND_NAMESPACES:
            problems.append(f"commands use {len(namespaces)} namespaces ({', '.join(sorted(namespaces))}); "
                            f"at most {MAX_COMMAND_NAMESPACES}")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("config")
    @classmethod
    def _config_size(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_json_size("config", value, MAX_CONFIG_BYTES)
        return value

    @field_validator("command_groups")
    @classmethod
    def _group_words(cls, value: dict[str, CommandGroup]) -> dict[str, CommandGroup]:
        problems = [p for p in (_word_problem(word) for word in value) if p]
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @model_validator(mode="after")
    def _one_owner_per_word(self) -> "PluginSpec":
        """A chat word names one thing: a plain command, a group, or an alias."""
        seen: dict[str, str] = {word: "commands" for word in self.commands}
        problems = [f"commands: {_word_problem(word)}" for word in self.commands if word in RESERVED_CHAT_WORDS]
        for word, group in self.command_groups.items():
            for claimed, what in ((word, f"command_groups.{word}"),
                                  *((alias, f"command_groups.{word}.aliases") for alias in group.aliases)):
                if claimed in seen:
                    problems.append(f"chat word !{claimed} appears in both {seen[claimed]} and {what}")
                seen.setdefault(claimed, what)
        if len(seen) > MAX_CHAT_WORDS:
            problems.append(f"at most {MAX_CHAT_WORDS} chat words per plugin, got {len(seen)}")
        namespaces = self.command_namespaces()   # plain commands and groups together
        if len(namespaces) > MAX_COMMAND_NAMESPACES:
            problems.append(f"commands and command_groups use {len(namespaces)} namespaces "
                            f"({', '.join(namespaces)}); at most {MAX_COMMAND_NAMESPACES}")
        if len(self.command_targets()) > MAX_COMMAND_SUBJECTS:
            problems.append(f"{len(self.command_targets())} distinct command subjects across commands and "
                            f"command_groups; at most {MAX_COMMAND_SUBJECTS}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _exports_have_a_name(self) -> "PluginSpec":
        # Callers name a callee by its subject namespace; the default, the
        # plugin id, differs between one host and Kubernetes.
        if self.exports and self.subject_namespace is None:
            raise ValueError("exports need a subject_namespace: callers name this plugin by it "
                             "(<subject_namespace>.<action>), and the default, the plugin id, "
                             "differs between one host and Kubernetes")
        return self

    @field_validator("permissions")
    @classmethod
    def _unique(cls, value: list[Permission]) -> list[Permission]:
        seen = []
        for p in value:
            if p in seen:
                raise ValueError(f"{p.value} is listed twice")
            seen.append(p)
        return value

    @field_validator("config_schema")
    @classmethod
    def _schema_is_valid(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        _check_json_size("config_schema", value, MAX_CONFIG_SCHEMA_BYTES)
        validator = jsonschema.validators.validator_for(value, default=jsonschema.Draft202012Validator)
        try:
            validator.check_schema(value)
        except jsonschema.SchemaError as exc:
            where = ".".join(str(p) for p in exc.path) or "(schema)"
            raise ValueError(f"not a valid JSON Schema at {where}: {exc.message}") from None
        return value

    @model_validator(mode="after")
    def _config_matches_schema(self) -> "PluginSpec":
        if self.config_schema is None:
            return self
        validator_cls = jsonschema.validators.validator_for(self.config_schema, default=jsonschema.Draft202012Validator)
        errors = sorted(validator_cls(self.config_schema).iter_errors(self.config), key=lambda e: list(e.path))
        if errors:
            lines = []
            for err in errors[:10]:
                where = ".".join(["config", *(str(p) for p in err.path)])
                lines.append(f"{where}: {err.message}")
            raise ValueError("config does not match config_schema: " + "; ".join(lines))
        return self

    # -- what this spec claims ------------------------------------------------

    def command_subjects(self) -> dict[str, str]:
        """Chat word -> full command subject."""
        return {word: wire.command(target) for word, target in self.commands.items()}

    def command_targets(self) -> list[str]:
        """Every '<ns>.<action>' it serves: plain words and command groups."""
        groups = [t for group in self.command_groups.values() for t in group.targets()]
        return sorted({*self.commands.values(), *groups})

    def all_command_subjects(self) -> list[str]:
        """Every command subject it serves (each exported once)."""
        return [wire.command(target) for target in self.command_targets()]

    def chat_routes(self) -> dict[str, dict[str, Any]]:
        """Chat word -> how the dispatcher turns `!word args` into a request:
        {"subject"} for a plain word; {"subcommands", "default"} for a group,
        plus {"alias_of"} for each of its aliases."""
        routes: dict[str, dict[str, Any]] = {w: {"subject": s} for w, s in self.command_subjects().items()}
        for word, group in self.command_groups.items():
            routes[word] = group.route()
            for alias in group.aliases:
                routes[alias] = {**group.route(), "alias_of": word}
        return routes

    def command_namespaces(self) -> list[str]:
        return sorted({target.split(".", 1)[0] for target in self.command_targets()})

    @property
    def granted(self) -> frozenset[Permission]:
        """Declared permissions plus those they imply (write implies read)."""
        grants = set(self.permissions)
        if Permission.database_write in grants:
            grants.add(Permission.database_read)
        if Permission.file_system_write in grants:
            grants.add(Permission.file_system_read)
        return frozenset(grants)


class Manifest(PluginSpec):
    """`plugin.yaml`: the seed's fields plus Precinct's extras."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=63)] = Field(
        ..., description="Plugin name; its DNS-1123 form is the plugin id."
    )

    @field_validator("name")
    @classmethod
    def _name_becomes_id(cls, value: str) -> str:
        try:
            canonical_id(value)
        except IdError as exc:
            raise ValueError(str(exc)) from None
        return value

    @property
    def id(self) -> str:
        return canonical_id(self.name)

    @property
    def namespace(self) -> str:
        return self.subject_namespace or self.id

    def without_name(self) -> PluginSpec:
        return PluginSpec.model_validate(self.model_dump(exclude={"name"}, by_alias=False), by_name=True, by_alias=False)


class BundleRef(_Model):
    name: Token
    version: Annotated[str, StringConstraints(min_length=1, max_length=64)]


_DIGEST_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$")  # pydantic: whole string


class BotPluginSpec(PluginSpec):
    """`spec` of a BotPlugin custom resource (camelCase on the wire)."""

    image: Annotated[str, StringConstraints(max_length=512, pattern=_DIGEST_IMAGE.pattern)] | None = Field(
        None, description="Plugin image pinned by digest (repo@sha256:...)."
    )
    bundle: BundleRef | None = Field(None, description="A verified release from the plugin index.")
    suspend: bool = Field(False, description="Scale to zero and keep everything else.")

    @model_validator(mode="after")
    def _one_source(self) -> "BotPluginSpec":
        if (self.image is None) == (self.bundle is None):
            raise ValueError("set exactly one of image (pinned by digest) or bundle (name and version)")
        return self


def load_manifest(data: Any) -> Manifest:
    """Validate a `plugin.yaml` document (snake_case only)."""
    return Manifest.model_validate(data, by_alias=False, by_name=True)


def load_botplugin_spec(data: Any) -> BotPluginSpec:
    """Validate a BotPlugin `spec` (camelCase only)."""
    return BotPluginSpec.model_validate(data, by_alias=True, by_name=False)
