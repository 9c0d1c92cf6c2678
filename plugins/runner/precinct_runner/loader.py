"""Finding, importing and constructing a plugin class.

Plugin folders are often not Python identifiers (`8ball`, `dice-roller`) and
their code may use relative imports (`from .answers import ANSWERS`), so the
folder is loaded as a synthetic package: a module registered under a safe name
whose `__path__` is the folder. The entrypoint module is then imported from
that package like any submodule.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import re
import sys
from pathlib import Path
from typing import Any

DEFAULT_MODULE = "plugin"
# Where `precinct plugin install` unpacks a bundle's wheels (the plugin's own
# environment, never the host's).
DEPS_DIR = ".deps"
_ENTRYPOINT = re.compile(r"^(?P<module>[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*):(?P<cls>[A-Za-z_][A-Za-z0-9_]*)$")


class LoadError(Exception):
    """The plugin cannot be loaded or constructed. The message is one line
    meant for a person; `__cause__` holds the original exception, if any."""


def package_name(plugin_dir: Path) -> str:
    """A valid, collision-free module name for the plugin folder."""
    return "precinct_plugin_" + re.sub(r"\W", "_", plugin_dir.name, flags=re.ASCII)


def load_package(plugin_dir: Path) -> str:
    """Register `plugin_dir` as a package and return its module name. The
    folder's `__init__.py`, if any, runs as the package's body."""
    name = package_name(plugin_dir)
    if name in sys.modules:
        return name
    init = plugin_dir / "__init__.py"
    if init.is_file():
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(plugin_dir)])
    else:
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(plugin_dir)]
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    if spec.loader is not None:
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:
            sys.modules.pop(name, None)
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise LoadError(f"{init} failed: {_describe(exc)}") from exc
    return name


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"plugin code called sys.exit({exc.code!r})"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _has_hook(obj: Any, name: str) -> bool:
    return callable(getattr(obj, name, None))


def _is_plugin_class(obj: Any) -> bool:
    """A Rosey plugin class has `initialize()` and/or `shutdown()`, sync or
    async (quote-db has no shutdown(); a plugin that only needs cleanup may
    lack initialize())."""
    return inspect.isclass(obj) and (_has_hook(obj, "initialize") or _has_hook(obj, "shutdown"))


def _import_entry_module(plugin_dir: Path, package: str, module_name: str):
    full = f"{package}.{module_name}"
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as exc:
        if exc.name in (full, f"{package}.{module_name.split('.')[0]}"):
            expected = plugin_dir / (module_name.replace(".", "/") + ".py")
            raise LoadError(f"no module {module_name!r} in {plugin_dir} (expected {expected})") from exc
        raise LoadError(f"importing {module_name} failed: {_describe(exc)}") from exc
    except LoadError:
        raise
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise LoadError(f"importing {module_name} failed: {_describe(exc)}") from exc


def find_default_class(module) -> type:
    """The one class in `module` with `initialize()` or `shutdown()` (sync or async).

    Classes defined in the module win over ones it merely imports, a class
    with both hooks wins over one with only one, and a base class loses to
    its subclass, so `class Base` + `class Dice(Base)` in the same file still
    means `Dice`."""
    candidates = [obj for obj in vars(module).values() if _is_plugin_class(obj)]
    own = [c for c in candidates if c.__module__ == module.__name__]
    if own:
        candidates = own
    both = [c for c in candidates if _has_hook(c, "initialize") and _has_hook(c, "shutdown")]
    if both:
        candidates = both
    candidates = [c for c in candidates if not any(o is not c and issubclass(o, c) for o in candidates)]
    if len(candidates) == 1:
        return candidates[0]
    where = getattr(module, "__file__", module.__name__)
    if not candidates:
        classes = sorted(n for n, o in vars(module).items() if inspect.isclass(o) and o.__module__ == module.__name__)
        seen = ", ".join(classes) if classes else "none"
        raise LoadError(
            f"no plugin class in {where}: expected one class with initialize() or shutdown() "
            f"(classes defined there: {seen}); set entrypoint: module:Class in plugin.yaml"
        )
    names = ", ".join(sorted(c.__name__ for c in candidates))
    raise LoadError(
        f"{len(candidates)} plugin classes in {where} ({names}); choose one with entrypoint: module:Class in plugin.yaml"
    )


def add_deps_paths(plugin_dir: Path, deps: Path | None = None) -> None:
    """Make the plugin's dependencies importable: `deps` (installed for it by
    the platform) and `<plugin-dir>/.deps` (a bundle's wheels). Appended
    after the runner's own site-packages, so the runner's nats-py (and
    everything else it ships) always wins over a copy a dependency brought."""
    for folder in (deps, plugin_dir / DEPS_DIR):
        if folder is not None and folder.is_dir() and str(folder) not in sys.path:
            sys.path.append(str(folder))


def load_plugin_class(plugin_dir: Path, entrypoint: str | None = None, *, deps: Path | None = None) -> type:
    """Import the plugin folder and return its plugin class."""
    if not plugin_dir.is_dir():
        raise LoadError(f"plugin folder {plugin_dir} does not exist or is not a directory")
    if entrypoint:
        match = _ENTRYPOINT.match(entrypoint)
        if not match:
            raise LoadError(f"entrypoint {entrypoint!r} must look like module:Class, e.g. plugin:DicePlugin")
        module_name, class_name = match["module"], match["cls"]
    else:
        module_name, class_name = DEFAULT_MODULE, None
    add_deps_paths(plugin_dir, deps)
    package = load_package(plugin_dir)
    module = _import_entry_module(plugin_dir, package, module_name)
    if class_name is None:
        return find_default_class(module)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise LoadError(f"entrypoint {entrypoint}: {module_name} has no attribute {class_name!r}")
    if not inspect.isclass(cls):
        raise LoadError(f"entrypoint {entrypoint}: {class_name} is a {type(cls).__name__}, not a class")
    for method in ("initialize", "shutdown"):
        hook = getattr(cls, method, None)
        if hook is not None and not callable(hook):
            raise LoadError(f"entrypoint {entrypoint}: {class_name}.{method} is a {type(hook).__name__}, not a method")
    return cls


# Names under which a constructor's second parameter is clearly the config.
_CONFIG_NAMES = frozenset({"config", "cfg", "conf", "configuration", "settings", "options", "plugin_config"})


def construct(cls: type, client: Any, config: dict) -> Any:
    """Build the plugin the way its constructor asks for.

    Rosey's shapes: `(nats_client)`, `(nats_client, config=None)`, and extra
    keyword parameters with defaults, which keep their defaults
    (`plugin_manager` gets None: Rosey's host passed its plugin manager
    there, and Precinct has none to share). The config goes to a parameter
    named `config` (or a synonym), else to a required second positional
    parameter; a required parameter the runner cannot fill is a clear load
    error, not a TypeError."""
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        sig = None
    args: list[Any] = [client]
    kwargs: dict[str, Any] = {}
    if sig is None:
        args.append(config)
    else:
        params = list(sig.parameters.values())
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        var_positional = any(p.kind is p.VAR_POSITIONAL for p in params)
        if not positional and not var_positional:
            raise LoadError(f"{cls.__name__}() takes no arguments; a plugin's constructor takes the NATS client first")
        rest = [p for p in params if p not in positional[:1] and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        config_param = next((p for p in rest if p.name in _CONFIG_NAMES), None)
        if config_param is None and rest and rest[0].kind is not rest[0].KEYWORD_ONLY and rest[0].default is rest[0].empty:
            config_param = rest[0]                   # a required second positional under another name
        if config_param is not None:
            if config_param.kind is config_param.POSITIONAL_ONLY:
                args.append(config)
            else:
                kwargs[config_param.name] = config
        elif var_positional and not rest:
            args.append(config)
        manager = next((p for p in rest if p.name == "plugin_manager"), None)
        if manager is not None and manager is not config_param:
            # Rosey's host passes its plugin manager here; Precinct has none to share.
            kwargs["plugin_manager"] = None
        missing = [p.name for p in rest if p not in (config_param, manager) and p.default is p.empty]
        if missing:
            raise LoadError(
                f"{cls.__name__}() needs {', '.join(missing)}, which the runner cannot supply; a plugin's "
                "constructor takes the NATS client, optionally the config, and other parameters only with defaults"
            )
    try:
        return cls(*args, **kwargs)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise LoadError(f"constructing {cls.__name__} failed: {_describe(exc)}") from exc


async def call_hook(plugin: Any, name: str) -> bool:
    """Call `plugin.<name>()` if it exists, awaiting it if it is async (or
    returns an awaitable). False when the plugin has no such hook."""
    hook = getattr(plugin, name, None)
    if hook is None:
        return False
    result = hook()
    if inspect.isawaitable(result):
        await result
    return True


def plugin_version(plugin: Any) -> str | None:
    """VERSION from the instance/class, else from its module."""
    version = getattr(plugin, "VERSION", None)
    if version is None:
        module = sys.modules.get(type(plugin).__module__)
        version = getattr(module, "VERSION", None)
    return None if version is None else str(version)
