"""Call hook implementations one by one, timing each and applying the failure policy.

pluggy calls every implementation of a hook in one go and re-raises a failure unchanged,
so it cannot say which plugin was slow or which one failed, and a failure stops the rest
of the hook. hookloop therefore takes each hook's implementations (`get_hookimpls()`), puts
them in the resolved plugin order (`hookloop.loading.call_order`) and calls each itself:

- the time spent in each plugin is summed, to report the cost per step per plugin;
- a plugin that raises is named together with the hook; a non-critical one (its class sets
  `critical = False`: loggers, progress bars) is logged once and unregistered, and the
  remaining implementations still run; a critical one stops the run with a `PluginError`.

Hooks with pluggy wrappers (`wrapper=True` / `hookwrapper=True`) go through pluggy itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from time import perf_counter
from typing import Any

import pluggy
import structlog

from hookloop.errors import HookloopError, PluginError
from hookloop.loading import call_order

__all__ = ["HookDispatcher"]

log = structlog.get_logger("hookloop")


class _Impl:
    """One plugin's implementation of one hook, with its accumulated cost."""

    __slots__ = ("argnames", "critical", "function", "plugin_name")

    def __init__(self, impl: pluggy.HookImpl, critical: bool) -> None:
        self.plugin_name: str = impl.plugin_name
        self.function: Callable[..., Any] = impl.function
        self.argnames: tuple[str, ...] = impl.argnames
        self.critical = critical


class HookDispatcher:
    """Calls the hooks of one plugin manager with per-plugin timing and failure policy."""

    def __init__(
        self,
        pm: pluggy.PluginManager,
        rank: Mapping[str, int],
        on_disable: Callable[[str, str, Exception], None] | None = None,
    ) -> None:
        self._pm = pm
        self._rank = rank
        self._on_disable = on_disable
        self._impls: dict[str, tuple[_Impl, ...] | None] = {}
        self._seconds: dict[str, float] = {}
        self._trace = os.environ.get("HOOKLOOP_TRACE_PLUGINS", "") not in ("", "0")
        self.disabled: dict[str, str] = {}
        """Plugins unregistered after a failure, with the reason."""

    def _resolve(self, hook: str) -> tuple[_Impl, ...] | None:
        caller = getattr(self._pm.hook, hook)
        impls = caller.get_hookimpls()
        if any(i.hookwrapper or i.wrapper for i in impls):
            resolved = None  # let pluggy run the wrapper protocol
        else:
            resolved = tuple(
                _Impl(i, getattr(i.plugin, "critical", True)) for i in call_order(impls, self._rank)
            )
        self._impls[hook] = resolved
        return resolved

    def _lookup(self, hook: str) -> tuple[_Impl, ...] | None:
        """The cached calling order of `hook` (None: it has wrappers, pluggy runs it)."""
        try:
            return self._impls[hook]
        except KeyError:
            return self._resolve(hook)

    def call(self, hook: str, /, **kwargs: Any) -> None:
        """Call every implementation of `hook` in order with the arguments it takes."""
        impls = self._lookup(hook)
        if impls is None:
            getattr(self._pm.hook, hook)(**kwargs)
            return
        for impl in impls:
            self._call_one(hook, impl, kwargs)

    def collect(self, hook: str, /, **kwargs: Any) -> dict[str, Any]:
        """Call `hook` and return each plugin's non-None result under its plugin name."""
        results: dict[str, Any] = {}
        for impl in self._lookup(hook) or ():
            result = self._call_one(hook, impl, kwargs)
            if result is not None:
                results[impl.plugin_name] = result
        return results

    def call_each(self, hook: str, per_plugin: Mapping[str, Mapping[str, Any]]) -> None:
        """Call `hook` only on the plugins named in `per_plugin`, each with its own arguments."""
        for impl in self._lookup(hook) or ():
            if impl.plugin_name in per_plugin:
                self._call_one(hook, impl, per_plugin[impl.plugin_name])

    def _call_one(self, hook: str, impl: _Impl, kwargs: Mapping[str, Any]) -> Any:
        if impl.plugin_name in self.disabled:
            return None
        if self._trace:
            log.info("hook_call", hook=hook, plugin=impl.plugin_name)
        start = perf_counter()
        try:
            return impl.function(*[kwargs[name] for name in impl.argnames])
        except Exception as exc:
            self._fail(hook, impl, exc)
            return None
        finally:
            self._seconds[impl.plugin_name] = (
                self._seconds.get(impl.plugin_name, 0.0) + perf_counter() - start
            )

    def _fail(self, hook: str, impl: _Impl, exc: Exception) -> None:
        if impl.critical:
            if isinstance(exc, HookloopError):
                raise exc  # already a user-facing message; keep it as it is
            raise PluginError(
                f"plugin {impl.plugin_name!r} failed in hook {hook!r}: {type(exc).__name__}: {exc}"
            ) from exc
        self.disabled[impl.plugin_name] = f"failed in hook {hook!r}: {type(exc).__name__}: {exc}"
        self._pm.unregister(name=impl.plugin_name)
        self._impls.clear()
        if self._on_disable is not None:
            self._on_disable(impl.plugin_name, hook, exc)
        else:
            log.error("plugin_disabled", plugin=impl.plugin_name, hook=hook, error=repr(exc))

    def seconds_by_plugin(self) -> dict[str, float]:
        """Total seconds spent inside each plugin's hooks so far."""
        return dict(self._seconds)

    def reset(self) -> None:
        """Forget the resolved implementations, e.g. after a plugin was (un)registered."""
        self._impls.clear()
