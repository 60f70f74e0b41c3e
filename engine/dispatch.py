"""The one way hooks are called: each implementation in turn, timed, under the failure policy.

pluggy calls every implementation of a hook in one go and re-raises a failure unchanged,
so it cannot say which plugin was slow or which one failed, and a failure stops the rest
of the hook. hookloop therefore takes each hook's implementations (`get_hookimpls()`), puts
them in the resolved plugin order (`hookloop.loading.call_order`) and calls each itself.
Every caller goes through here: the loop, `on_exception`, the doctor, third-party hooks.

- The time spent in each plugin is summed, to report the cost per step per plugin.
- A plugin that raises is named together with the hook. A non-critical one (its class sets
  `critical = False`: loggers, progress bars) is logged once and unregistered, and the
  remaining implementations still run; a critical one stops the run with a `PluginError`.
  `call_logging_errors` (used for `on_exception`) logs every failure and raises none.
- Wrappers (`wrapper=True`) run around the plain implementations as pluggy runs them: the
  outermost wrapper first, each resumed with the result (or error) of what it wraps; a
  wrapper's own time is charged to its plugin. pluggy's old-style `hookwrapper=True` is
  refused when a plugin is registered (`hookloop.loading.register_plugins`).
- A hook specified with `firstresult=True` stops at the first implementation that returns
  something other than None and returns that value, as in pluggy.
- The caller is checked against the hook's spec: a missing or unknown argument raises a
  `TypeError` naming the hook and the argument, and no plugin is blamed or disabled for it
  (see `HookDispatcher.call` for when the check runs and why it costs the loop nothing).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Mapping
from time import perf_counter
from typing import Any

import pluggy
import structlog

from hookloop.errors import HookloopError, PluginError
from hookloop.loading import call_order

__all__ = ["HookDispatcher"]

log = structlog.get_logger("hookloop")


class _Impl:
    """One plugin's implementation of one hook."""

    __slots__ = ("argnames", "critical", "function", "plugin_name")

    def __init__(self, impl: pluggy.HookImpl) -> None:
        self.plugin_name: str = impl.plugin_name
        self.function: Callable[..., Any] = impl.function
        self.argnames: tuple[str, ...] = impl.argnames
        self.critical: bool = getattr(impl.plugin, "critical", True)


class _Plan:
    """How to call one hook: wrappers (outermost first), plain implementations, in order.

    `argnames` are the spec's argument names (None for a hook nobody specified, which is
    not checked) and `arity` their number, so the hot path can compare one integer.
    """

    __slots__ = ("argnames", "arity", "firstresult", "impls", "wrappers")

    def __init__(self, caller: pluggy.HookCaller, rank: Mapping[str, int]) -> None:
        ordered = call_order(caller.get_hookimpls(), rank)
        self.wrappers = tuple(_Impl(i) for i in ordered if i.wrapper)
        self.impls = tuple(_Impl(i) for i in ordered if not i.wrapper)
        spec = caller.spec
        self.firstresult: bool = bool(spec is not None and spec.opts.get("firstresult"))
        self.argnames: tuple[str, ...] | None = None if spec is None else tuple(spec.argnames)
        self.arity: int = -1 if self.argnames is None else len(self.argnames)


def check_arguments(hook: str, argnames: tuple[str, ...] | None, given: Mapping[str, Any]) -> None:
    """Raise a `TypeError` naming `hook` and the argument when `given` does not match its spec.

    A `TypeError`, as Python raises for a function called with a missing or unexpected
    keyword: the caller (the loop, or code calling `Engine.call_hook`) has a bug. It is not a
    `HookloopError`, because no configuration or data the user gave can cause it, so it keeps
    its traceback and is never reported as a one-line user mistake or blamed on a plugin.
    """
    if argnames is None:  # a hook without a spec: pluggy checks nothing either
        return
    takes = ", ".join(argnames)
    for name in argnames:
        if name not in given:
            raise TypeError(
                f"hook {hook!r} called without argument {name!r} (its spec takes {takes})"
            )
    for name in given:
        if name not in argnames:
            raise TypeError(
                f"hook {hook!r} called with unknown argument {name!r} (its spec takes {takes})"
            )


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
        self._plans: dict[str, _Plan] = {}
        self._seconds: dict[str, float] = {}
        self._trace = os.environ.get("HOOKLOOP_TRACE_PLUGINS", "") not in ("", "0")
        self.disabled: dict[str, str] = {}
        """Plugins unregistered after a failure, with the reason."""

    def _plan(self, hook: str, kwargs: Mapping[str, Any]) -> _Plan:
        """The cached calling plan of `hook`, resolved on first use, with the call checked.

        The full check (`check_arguments`) runs when the plan is resolved (the first call,
        and again after a plugin was disabled, added or removed) and whenever the number of
        arguments differs from the spec's; otherwise it costs one integer comparison.
        `_blame` checks again before a plugin's `KeyError` or `TypeError` is blamed on it.
        """
        plan = self._plans.get(hook)
        if plan is None:
            plan = _Plan(getattr(self._pm.hook, hook), self._rank)
            check_arguments(hook, plan.argnames, kwargs)
            self._plans[hook] = plan
        elif len(kwargs) != plan.arity and plan.argnames is not None:
            check_arguments(hook, plan.argnames, kwargs)
        return plan

    def call(self, hook: str, /, **kwargs: Any) -> Any:
        """Call every implementation of `hook` in order with the arguments it takes.

        The arguments must be exactly those of the hook's spec: a missing or unknown one
        raises a `TypeError` naming the hook and the argument (see `check_arguments`), and
        no plugin is disabled for it. The loop calls hooks on every step, so the full check
        runs only on the first call of each hook, when the number of arguments differs from
        the spec's, and when a plugin raises `KeyError` or `TypeError` (the two errors a bad
        call causes inside a plugin); otherwise it costs one integer comparison.

        Returns:
            What pluggy would return: for a `firstresult` hook the first non-None result (or
            None), otherwise the list of non-None results in calling order.
        """
        plan = self._plan(hook, kwargs)
        if plan.wrappers:
            return self._call_wrapped(hook, plan, kwargs)
        return self._call_plain(hook, plan, kwargs, raise_errors=True)

    def call_logging_errors(self, hook: str, /, **kwargs: Any) -> None:
        """Call `hook` like `call`, but log each failing implementation instead of raising.

        For `on_exception`: the error being handled is the one that matters, and every
        plugin should get its chance to react to it.
        """
        self._call_plain(hook, self._plan(hook, kwargs), kwargs, raise_errors=False)

    def collect(self, hook: str, /, **kwargs: Any) -> dict[str, Any]:
        """Call `hook` and return each plugin's non-None result under its plugin name."""
        results: dict[str, Any] = {}
        for impl in self._plan(hook, kwargs).impls:
            result = self._call_one(hook, impl, kwargs)
            if result is not None:
                results[impl.plugin_name] = result
        return results

    def call_each(self, hook: str, per_plugin: Mapping[str, Mapping[str, Any]]) -> None:
        """Call `hook` only on the plugins named in `per_plugin`, each with its own arguments."""
        if not per_plugin:
            return
        calls = list(per_plugin.values())
        argnames = self._plan(hook, calls[0]).argnames
        for kwargs in calls[1:]:
            check_arguments(hook, argnames, kwargs)
        for impl in self._plans[hook].impls:
            if impl.plugin_name in per_plugin:
                self._call_one(hook, impl, per_plugin[impl.plugin_name])

    def _call_plain(
        self, hook: str, plan: _Plan, kwargs: Mapping[str, Any], *, raise_errors: bool
    ) -> Any:
        results = []
        for impl in plan.impls:
            result = self._call_one(hook, impl, kwargs, raise_errors=raise_errors)
            if result is not None:
                if plan.firstresult:
                    return result
                results.append(result)
        return None if plan.firstresult else results

    def _call_wrapped(self, hook: str, plan: _Plan, kwargs: Mapping[str, Any]) -> Any:
        """Run the wrappers around the plain implementations, as pluggy's `_multicall` does."""
        entered: list[tuple[_Impl, Generator[None, Any, Any]]] = []
        outcome: Any = None
        error: BaseException | None = None
        try:
            for impl in plan.wrappers:
                generator = self._enter(hook, impl, kwargs)
                if generator is not None:
                    entered.append((impl, generator))
            outcome = self._call_plain(hook, plan, kwargs, raise_errors=True)
        except BaseException as exc:
            error = exc
        for impl, generator in reversed(entered):
            outcome, error = self._leave(hook, impl, generator, outcome, error)
        if error is not None:
            raise error
        return outcome

    def _enter(
        self, hook: str, impl: _Impl, kwargs: Mapping[str, Any]
    ) -> Generator[None, Any, Any] | None:
        """Run a wrapper up to its `yield`; None when its plugin is disabled or just failed."""
        if impl.plugin_name in self.disabled:
            return None
        start = perf_counter()
        try:
            generator = impl.function(*[kwargs[name] for name in impl.argnames])
            next(generator)
            return generator
        except StopIteration:
            raise RuntimeError(f"wrapper {impl.plugin_name!r} of {hook!r} did not yield") from None
        except Exception as exc:
            self._blame(hook, kwargs, exc)
            self._fail(hook, impl, exc)
            return None
        finally:
            self._charge(impl.plugin_name, start)

    def _leave(
        self,
        hook: str,
        impl: _Impl,
        generator: Generator[None, Any, Any],
        outcome: Any,
        error: BaseException | None,
    ) -> tuple[Any, BaseException | None]:
        """Resume a wrapper with what it wrapped; returns the outcome or error it leaves."""
        start = perf_counter()
        try:
            if error is not None:
                generator.throw(error)
            else:
                generator.send(outcome)
        except StopIteration as stop:
            return stop.value, None
        except Exception as exc:
            if exc is error:  # the wrapper let the error through
                return None, error
            try:
                self._fail(hook, impl, exc)
            except BaseException as named:
                return None, named
            return outcome, error  # a non-critical wrapper failed: carry on without it
        except BaseException as exc:
            return None, exc
        finally:
            self._charge(impl.plugin_name, start)
        raise RuntimeError(f"wrapper {impl.plugin_name!r} of {hook!r} yielded twice")

    def _call_one(
        self, hook: str, impl: _Impl, kwargs: Mapping[str, Any], *, raise_errors: bool = True
    ) -> Any:
        if impl.plugin_name in self.disabled:
            return None
        if self._trace:
            log.info("hook_call", hook=hook, plugin=impl.plugin_name)
        start = perf_counter()
        try:
            return impl.function(*[kwargs[name] for name in impl.argnames])
        except Exception as exc:
            self._blame(hook, kwargs, exc)
            if raise_errors:
                self._fail(hook, impl, exc)
            else:
                log.error("hook_failed", hook=hook, plugin=impl.plugin_name, error=repr(exc))
            return None
        finally:
            self._charge(impl.plugin_name, start)

    def _charge(self, plugin: str, start: float) -> None:
        self._seconds[plugin] = self._seconds.get(plugin, 0.0) + perf_counter() - start

    def _blame(self, hook: str, kwargs: Mapping[str, Any], exc: Exception) -> None:
        """Before a plugin is blamed for `exc`: raise instead if the call itself was wrong.

        A missing argument shows up inside a plugin as a `KeyError` (or a `TypeError`), which
        would otherwise disable an innocent plugin; the spec is checked only on this path.
        """
        if isinstance(exc, (KeyError, TypeError)):
            spec = getattr(self._pm.hook, hook).spec
            check_arguments(hook, None if spec is None else tuple(spec.argnames), kwargs)

    def _fail(self, hook: str, impl: _Impl, exc: Exception) -> None:
        if impl.critical:
            if isinstance(exc, HookloopError):
                raise exc  # already a user-facing message; keep it as it is
            raise PluginError(
                f"plugin {impl.plugin_name!r} failed in hook {hook!r}: {type(exc).__name__}: {exc}"
            ) from exc
        self.disabled[impl.plugin_name] = f"failed in hook {hook!r}: {type(exc).__name__}: {exc}"
        self._pm.unregister(name=impl.plugin_name)
        self._plans.clear()
        if self._on_disable is not None:
            self._on_disable(impl.plugin_name, hook, exc)
        else:
            log.error("plugin_disabled", plugin=impl.plugin_name, hook=hook, error=repr(exc))

    def seconds_by_plugin(self) -> dict[str, float]:
        """Total seconds spent inside each plugin's hooks so far."""
        return dict(self._seconds)

    def reorder(self, rank: Mapping[str, int]) -> None:
        """Adopt a new plugin order (after a plugin was added or removed) and re-resolve."""
        self._rank = rank
        self._plans.clear()
