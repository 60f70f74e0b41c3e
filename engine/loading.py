"""Find plugins through entry points, load the enabled ones, and resolve their order.

Discovery reads entry-point metadata only; a plugin's module is imported only when the
plugin is enabled. Entry points name classes, so hookloop loads them itself rather than
through pluggy's `load_setuptools_entrypoints` (which would register the class, not an
instance): it imports the class, instantiates it with its options, and the engine registers
the instance under the entry point's name.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from hookloop import hookspecs
from hookloop.errors import PluginError

__all__ = [
    "as_record",
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "LoadedPlugin",
    "PluginInfo",
    "discover",
    "call_order",
    "hook_order",
    "load_plugins",
    "new_plugin_manager",
    "order_plugins",
    "plugin_name",
    "plugin_rank",
    "plugins_from_config",
    "register_plugins",
]

ENTRY_POINT_GROUP = "hookloop"
BUILTIN_DISTRIBUTION = "hookloop"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "nan_guard",
    "clip",
    "divergence",
    "schedule",
    "throughput",
    "eval",
    "checkpoint",
    "preemption",
    "console",
    "csv",
    "progress",
)
"""Built-in plugins enabled when a config says nothing about them."""


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """What the entry-point metadata says about one plugin, read without importing it."""

    name: str
    target: str  # "module:Class", as written in the entry point
    distribution: str
    version: str

    @property
    def builtin(self) -> bool:
        """True for the plugins that ship inside hookloop itself."""
        return self.distribution == BUILTIN_DISTRIBUTION

    @property
    def origin(self) -> str:
        """The distribution and version the plugin comes from, e.g. `hookloop 0.1.0`."""
        return f"{self.distribution} {self.version}"


@dataclass(frozen=True, slots=True)
class LoadedPlugin:
    """A plugin instance with the name it is registered under and where it came from.

    Any other attribute is the plugin instance's own (`loaded.exhausted_at` reads
    `loaded.plugin.exhausted_at`), so a test holding what `load_plugin` returned reads its
    plugin's state directly.
    """

    name: str
    plugin: object
    origin: str = "python"

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__") or attribute == "plugin":  # copy, pickle, half-made
            raise AttributeError(attribute)
        return getattr(self.plugin, attribute)


def discover() -> dict[str, PluginInfo]:
    """Every plugin installed in the `hookloop` entry-point group, by name.

    Raises:
        PluginError: two distributions declare a plugin of the same name.
    """
    found: dict[str, PluginInfo] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        info = PluginInfo(
            name=ep.name,
            target=ep.value,
            distribution=dist.metadata["Name"] if dist else "unknown",
            version=dist.version if dist else "?",
        )
        previous = found.get(ep.name)
        if previous is not None and previous != info:
            raise PluginError(
                f"two plugins are named {ep.name!r}: {previous.target} from {previous.origin} "
                f"and {info.target} from {info.origin}; uninstall one of them"
            )
        found[ep.name] = info
    return dict(sorted(found.items()))


def autoload_enabled() -> bool:
    """False when HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD is set: third-party plugins then load only
    when a config names them."""
    return os.environ.get("HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0")


def enabled_names(
    available: Mapping[str, PluginInfo],
    *,
    options: Mapping[str, Mapping[str, Any]] = {},
    enable: Iterable[str] = DEFAULT_PLUGINS,
    disable: Iterable[str] = (),
) -> list[str]:
    """The names of the plugins a run uses, in a deterministic order.

    A plugin is enabled when it is in `enable`, has an options table, or is a third-party
    plugin while autoload is on; `disable` wins over all three.

    Raises:
        PluginError: a name that is not an installed plugin.
    """
    enable, disable = list(enable), list(disable)
    for name in [*enable, *options, *disable]:
        if name not in available:
            raise PluginError(unknown_plugin_message(name, available))
    wanted = dict.fromkeys([*enable, *options])
    if autoload_enabled():
        wanted.update(dict.fromkeys(n for n, info in available.items() if not info.builtin))
    return [name for name in wanted if name not in disable]


def unknown_plugin_message(name: str, available: Iterable[str]) -> str:
    """The one-line error for a plugin name that is not installed."""
    names = sorted(available)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listing = ", ".join(names) if names else "none installed"
    return f"unknown plugin {name!r}{hint}; available plugins: {listing}"


def instantiate(info: PluginInfo, options: Mapping[str, Any]) -> LoadedPlugin:
    """Import one plugin's class and build it with its options.

    Raises:
        PluginError: the class cannot be imported, or an option is not one it accepts.
    """
    module_name, _, attr = info.target.partition(":")
    try:
        module = __import__(module_name, fromlist=["_"])
        cls = getattr(module, attr) if attr else module
    except Exception as exc:  # third-party code: any error at import time is its own
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise PluginError(
            f"plugin {info.name!r} from {info.origin} could not be imported "
            f"({type(exc).__name__}: {first}); fix or uninstall it, or leave it out with "
            f"-p no:{info.name} (or HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD=1)"
        ) from exc
    check_options(info.name, cls, options)
    try:
        plugin = cls(**options)
    except (TypeError, ValueError) as exc:
        raise PluginError(f"plugin {info.name!r}: bad options {dict(options)}: {exc}") from exc
    return LoadedPlugin(name=info.name, plugin=plugin, origin=info.origin)


def check_options(name: str, cls: type, options: Mapping[str, Any]) -> None:
    """Raise a PluginError naming the first option that `cls` does not accept."""
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [p for p, v in params.items() if v.kind is not inspect.Parameter.VAR_POSITIONAL]
    for key in options:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            listing = ", ".join(accepted) if accepted else "none"
            raise PluginError(
                f"plugin {name!r} has no option {key!r}{hint}; its options are: {listing}"
            )


def load_plugins(
    options: Mapping[str, Mapping[str, Any]] = {},
    *,
    enable: Iterable[str] = DEFAULT_PLUGINS,
    disable: Iterable[str] = (),
) -> list[LoadedPlugin]:
    """Discover, import and instantiate every enabled plugin.

    Args:
        options: Keyword options per plugin name (a config's `[plugins.<name>]` tables);
            naming a plugin here enables it.
        enable: Plugins to enable with their default options.
        disable: Plugins to leave out even if enabled otherwise (`-p no:<name>`).

    Returns:
        The plugins, ready to pass to `Engine(plugins=...)`.
    """
    available = discover()
    names = enabled_names(available, options=options, enable=enable, disable=disable)
    return [instantiate(available[name], options.get(name, {})) for name in names]


def plugins_from_config(
    table: Mapping[str, Any], *, extra_disable: Iterable[str] = ()
) -> list[LoadedPlugin]:
    """Load plugins from a config's `[plugins]` table.

    The table may hold `enable = [...]` (added to the defaults), `disable = [...]`, and one
    sub-table of options per plugin.

    Raises:
        PluginError: an unknown plugin, a bad option, or a malformed table.
    """
    options: dict[str, Mapping[str, Any]] = {}
    enable = list(DEFAULT_PLUGINS)
    disable = list(extra_disable)
    for key, value in table.items():
        if key in ("enable", "disable"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise PluginError(f"plugins.{key} must be a list of plugin names, got {value!r}")
            (enable if key == "enable" else disable).extend(value)
        elif isinstance(value, Mapping):
            options[key] = value
        else:
            raise PluginError(
                f"plugins.{key} must be a table of options ([plugins.{key}]), got {value!r}"
            )
    return load_plugins(options, enable=enable, disable=disable)


def plugin_name(plugin: object) -> str:
    """The name a plugin instance passed from Python is registered under: its `name`
    attribute, else its class name in lower case."""
    name = getattr(plugin, "name", None)
    return name if isinstance(name, str) and name else type(plugin).__name__.lower()


def order_plugins(plugins: list[LoadedPlugin]) -> list[LoadedPlugin]:
    """Sort plugins so each runs after the plugins it names in `after` and before those it
    names in `before`. Ties keep the given order; names of absent plugins are ignored. A
    plugin with `reads_metrics = True` (a logger) also runs after every plugin with
    `writes_metrics = True`, so it sees every value of the step in `state.metrics`.

    Raises:
        PluginError: the declarations form a cycle.
    """
    index = {p.name: i for i, p in enumerate(plugins)}
    runs_after: dict[str, set[str]] = {p.name: set() for p in plugins}
    writers = {p.name for p in plugins if getattr(p.plugin, "writes_metrics", False)}
    for p in plugins:
        if getattr(p.plugin, "reads_metrics", False):
            runs_after[p.name] |= writers - {p.name}
        for other in getattr(p.plugin, "after", ()):
            if other in index:
                runs_after[p.name].add(other)
        for other in getattr(p.plugin, "before", ()):
            if other in index:
                runs_after[other].add(p.name)
    ordered: list[LoadedPlugin] = []
    placed: set[str] = set()
    while len(ordered) < len(plugins):
        ready = [p for p in plugins if p.name not in placed and runs_after[p.name] <= placed]
        if not ready:
            stuck = sorted(n for n in index if n not in placed)
            raise PluginError(
                "plugin order has a cycle among "
                + ", ".join(f"{n} (after {sorted(runs_after[n] - placed)})" for n in stuck)
                + "; remove one of their before/after declarations"
            )
        first = min(ready, key=lambda p: index[p.name])
        ordered.append(first)
        placed.add(first.name)
    return ordered


def as_record(plugin: object) -> LoadedPlugin:
    """A `LoadedPlugin` for a plugin instance (named by `plugin_name`), or the record itself."""
    return plugin if isinstance(plugin, LoadedPlugin) else LoadedPlugin(plugin_name(plugin), plugin)


def new_plugin_manager() -> pluggy.PluginManager:
    """A plugin manager for the `hookloop` project with the core hook specifications."""
    pm = pluggy.PluginManager("hookloop")
    pm.add_hookspecs(hookspecs)
    return pm


def register_plugins(
    pm: pluggy.PluginManager, plugins: Iterable[object]
) -> dict[str, LoadedPlugin]:
    """Order and register plugins, adding any hook specifications they ship.

    Args:
        pm: A manager from `new_plugin_manager()`.
        plugins: Plugin instances or `LoadedPlugin` records.

    Returns:
        The plugins by name, in calling order.

    Raises:
        PluginError: two plugins share a name, their order has a cycle, or a plugin
            implements a hook that no specification declares.
    """
    records = [as_record(p) for p in plugins]
    seen: dict[str, LoadedPlugin] = {}
    for record in records:
        if record.name in seen:
            raise PluginError(
                f"two plugins are registered under the name {record.name!r} "
                f"({seen[record.name].origin} and {record.origin}); "
                "give one a different `name` attribute or drop it"
            )
        seen[record.name] = record
    ordered = order_plugins(records)
    added: set[int] = set()
    for record in ordered:
        specs = getattr(record.plugin, "hookspecs", None)
        if specs is not None and id(specs) not in added:
            added.add(id(specs))
            pm.add_hookspecs(specs)
    # pluggy calls the last-registered implementation first, so register in reverse.
    for record in reversed(ordered):
        try:
            pm.register(record.plugin, name=record.name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginError(f"plugin {record.name!r} cannot be registered: {exc}") from exc
    for record in ordered:
        for caller in pm.get_hookcallers(record.plugin) or ():
            if any(i.hookwrapper and i.plugin is record.plugin for i in caller.get_hookimpls()):
                raise PluginError(
                    f"plugin {record.name!r} marks {caller.name!r} with hookwrapper=True, "
                    "pluggy's old-style wrapper; use @hookimpl(wrapper=True) instead"
                )
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"plugin {pm.get_name(exc.plugin)!r} implements a hook that no specification "
            f"declares ({exc}); check the method name against hookloop.hookspecs"
        ) from exc
    return {r.name: r for r in ordered}


def call_order(impls: Iterable[pluggy.HookImpl], rank: Mapping[str, int]) -> list[pluggy.HookImpl]:
    """A hook's implementations in calling order: `tryfirst` ones, then plain ones, then
    `trylast` ones, each group in the plugins' resolved order (`rank`: name -> position).

    pluggy alone would call two `trylast` implementations in registration order but plain
    ones in reverse registration order, so no single registration order is right for both;
    sorting explicitly is.
    """

    def key(impl: pluggy.HookImpl) -> tuple[int, int]:
        group = 0 if impl.tryfirst else 2 if impl.trylast else 1
        return group, rank.get(impl.plugin_name, len(rank))

    return sorted(impls, key=key)


def hook_order(pm: pluggy.PluginManager, rank: Mapping[str, int]) -> dict[str, list[str]]:
    """For each hook with implementations, the plugin names in calling order."""
    order: dict[str, list[str]] = {}
    for name in sorted(vars(pm.hook)):
        impls = getattr(pm.hook, name).get_hookimpls()
        if impls:
            order[name] = [i.plugin_name for i in call_order(impls, rank)]
    return order


def plugin_rank(plugins: Iterable[str]) -> dict[str, int]:
    """Each plugin name's position in the resolved order, for `call_order`."""
    return {name: i for i, name in enumerate(plugins)}
