"""Per-plugin failure policy and cost accounting."""

from __future__ import annotations

import time
import types

import pytest

from hookloop import PluginError, hookimpl


class Flaky:
    """Raises in after_step at a given step; `critical` decides what the engine does."""

    def __init__(self, name: str, critical: bool, fail_at: int = 2) -> None:
        self.name, self.critical, self.fail_at = name, critical, fail_at
        self.calls = 0

    @hookimpl
    def after_step(self, state):
        self.calls += 1
        if state.step == self.fail_at:
            raise OSError("disk went away")


class Counter:
    name = "counter"

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def after_step(self):
        self.calls += 1


def test_non_critical_plugin_is_logged_once_and_disabled(make_engine, tmp_path):
    flaky, counter = Flaky("logger", critical=False), Counter()
    engine = make_engine(plugins=[flaky, counter], run_dir=tmp_path)
    state = engine.fit(max_steps=5)
    assert state.step == 5
    assert flaky.calls == 2  # never called again after failing
    assert counter.calls == 5  # later implementations of the same hook still ran
    assert "logger" in engine.disabled_plugins and "logger" not in engine.hook_order()["after_step"]
    (entry,) = engine.journal.read()
    assert entry["event"] == "plugin_disabled" and entry["plugin"] == "logger"
    assert entry["hook"] == "after_step"
    assert "OSError: disk went away" in entry["reason"] and entry["step"] == 2


def test_critical_plugin_stops_the_run_naming_plugin_and_hook(make_engine):
    engine = make_engine(plugins=[Flaky("checkpoint", critical=True)])
    with pytest.raises(PluginError) as info:
        engine.fit(max_steps=5)
    assert str(info.value) == (
        "plugin 'checkpoint' failed in hook 'after_step': OSError: disk went away"
    )
    assert isinstance(info.value.__cause__, OSError)
    assert engine.state.step == 2


def test_a_plugins_own_hookloop_error_passes_through_unchanged(make_engine):
    from hookloop import CheckpointError

    class Refuses:
        @hookimpl
        def on_fit_start(self):
            raise CheckpointError("checkpoint step-10 is corrupt")

    with pytest.raises(CheckpointError, match="^checkpoint step-10 is corrupt$"):
        make_engine(plugins=[Refuses()]).fit(max_steps=1)


def test_on_exception_failures_do_not_mask_the_original_error(make_engine):
    class BadHandler:
        @hookimpl
        def on_exception(self):
            raise RuntimeError("handler broke")

    with pytest.raises(PluginError, match="'checkpoint' failed"):
        make_engine(plugins=[BadHandler(), Flaky("checkpoint", critical=True)]).fit(max_steps=5)


def test_costs_are_reported_per_plugin_per_step(make_engine):
    class Slow:
        name = "slow"

        @hookimpl
        def after_step(self):
            time.sleep(0.01)

    engine = make_engine(plugins=[Slow(), Counter()])
    engine.fit(max_steps=4)
    costs = engine.plugin_costs()
    assert costs["slow"] >= 10.0  # milliseconds per step
    assert costs["counter"] < costs["slow"]


def test_collect_returns_results_by_plugin_name(make_engine):
    class Stateful:
        name = "stateful"

        def __init__(self):
            self.value = 0

        @hookimpl
        def on_save_checkpoint(self):
            return {"value": 41}

        @hookimpl
        def on_load_checkpoint(self, saved):
            self.value = saved["value"] + 1

    plugin = Stateful()
    engine = make_engine(plugins=[plugin, Counter()])
    saved = engine.plugin_states()
    assert saved == {"stateful": {"value": 41}}
    engine.load_plugin_states({**saved, "gone": {"x": 1}})
    assert plugin.value == 42


def test_trace_env_var_logs_every_hook_call(make_engine, monkeypatch, capsys):
    import structlog

    monkeypatch.setenv("HOOKLOOP_TRACE_PLUGINS", "1")
    with structlog.testing.capture_logs() as logs:
        make_engine(plugins=[Counter()]).fit(max_steps=2)
    calls = [e for e in logs if e["event"] == "hook_call"]
    assert [(c["hook"], c["plugin"]) for c in calls] == [("after_step", "counter")] * 2


class Wrapper:
    """A new-style pluggy wrapper around after_step that records what it wraps."""

    name = "wrapper"

    def __init__(self, seen: list, *, fail_after: bool = False, sleep: float = 0.0) -> None:
        self.seen, self.fail_after, self.sleep = seen, fail_after, sleep

    @hookimpl(wrapper=True)
    def after_step(self, state):
        self.seen.append(("enter", state.step))
        time.sleep(self.sleep)
        result = yield
        self.seen.append(("exit", state.step, result))
        if self.fail_after:
            raise ValueError("wrapper broke")
        return result


class Returns:
    name = "returns"

    @hookimpl
    def after_step(self, state):
        return state.step * 10


def test_wrappers_run_around_the_plain_implementations_through_the_dispatcher(make_engine):
    seen: list = []
    engine = make_engine(plugins=[Wrapper(seen, sleep=0.002), Returns(), Counter()])
    engine.fit(max_steps=2)
    # The wrapper receives the list of the plain implementations' non-None results.
    assert seen == [("enter", 1), ("exit", 1, [10]), ("enter", 2), ("exit", 2, [20])]
    assert engine.hooks.seconds_by_plugin()["wrapper"] >= 0.004  # its time is charged to it


def test_a_failing_critical_wrapper_is_named(make_engine):
    engine = make_engine(plugins=[Wrapper([], fail_after=True)])
    with pytest.raises(
        PluginError, match="plugin 'wrapper' failed in hook 'after_step': ValueError"
    ):
        engine.fit(max_steps=2)


def test_an_error_inside_a_wrapper_reaches_it_and_the_caller(make_engine):
    seen: list = []

    class Catcher:
        name = "catcher"

        @hookimpl(wrapper=True)
        def after_step(self):
            try:
                return (yield)
            except PluginError as exc:
                seen.append(str(exc))
                raise

    engine = make_engine(plugins=[Catcher(), Flaky("broken", critical=True, fail_at=1)])
    with pytest.raises(PluginError, match="'broken' failed"):
        engine.fit(max_steps=2)
    assert seen and "'broken' failed in hook 'after_step'" in seen[0]


def test_old_style_hookwrappers_are_refused_with_the_fix(make_engine):
    class Old:
        name = "old"

        @hookimpl(hookwrapper=True)
        def after_step(self):
            yield

    with pytest.raises(
        PluginError, match=r"'old' marks 'after_step' with hookwrapper=True.*wrapper=True"
    ):
        make_engine(plugins=[Old()])


def test_firstresult_hooks_a_third_party_declares_stop_at_the_first_answer(make_engine):
    from hookloop import hookspec

    @hookspec(firstresult=True)
    def thirdparty_pick(engine):
        """Pick one value."""

    Specs = types.ModuleType("thirdparty_specs")  # a third party's hookspecs module
    Specs.thirdparty_pick = thirdparty_pick

    calls = []

    def answerer(name, value):
        class Answer:
            hookspecs = Specs

            @hookimpl
            def thirdparty_pick(self):
                calls.append(name)
                return value

        Answer.name = name
        return Answer()

    engine = make_engine(plugins=[answerer("a", None), answerer("b", 2), answerer("c", 3)])
    assert engine.call_hook("thirdparty_pick", engine=engine) == 2
    assert calls == ["a", "b"]  # "c" is never asked


def test_plain_hooks_return_every_non_none_result(make_engine):
    engine = make_engine(plugins=[Returns(), Counter()])
    assert engine.call_hook("after_step", engine=engine, state=engine.state) == [0]


def test_on_exception_failures_are_logged_and_every_plugin_still_runs(make_engine):
    import structlog

    seen = []

    class BadHandler:
        name = "bad_handler"

        @hookimpl
        def on_exception(self, error):
            raise RuntimeError("handler broke")

    class GoodHandler:
        name = "good_handler"

        @hookimpl
        def on_exception(self, error):
            seen.append(type(error).__name__)

    engine = make_engine(
        plugins=[BadHandler(), GoodHandler(), Flaky("boom", critical=True, fail_at=1)]
    )
    with structlog.testing.capture_logs() as logs, pytest.raises(PluginError, match="'boom'"):
        engine.fit(max_steps=3)
    assert seen == ["PluginError"]
    failed = [e for e in logs if e["event"] == "hook_failed"]
    assert [(e["plugin"], e["hook"]) for e in failed] == [("bad_handler", "on_exception")]
    assert "handler broke" in failed[0]["error"]
    assert "bad_handler" not in engine.disabled_plugins  # logged, not disabled


def test_add_and_remove_plugins_through_the_engine(make_engine):
    counter = Counter()
    engine = make_engine(plugins=[])
    engine.fit(max_steps=1)
    engine.add_plugin(counter)
    engine.fit(max_steps=3)
    assert counter.calls == 2 and engine.hook_order()["after_step"] == ["counter"]
    assert engine.remove_plugin("counter") is counter
    engine.fit(max_steps=4)
    assert counter.calls == 2 and "after_step" not in engine.hook_order()
    with pytest.raises(PluginError, match="no plugin named 'counter' is registered"):
        engine.remove_plugin("counter")


def test_add_plugin_refuses_a_taken_name_and_keeps_the_declared_order(make_engine):
    class Early:
        name = "early"
        before = ("counter",)

        def __init__(self, seen):
            self.seen = seen

        @hookimpl
        def after_step(self):
            self.seen.append("early")

    engine = make_engine(plugins=[Counter()])
    with pytest.raises(PluginError, match="a plugin named 'counter' is already registered"):
        engine.add_plugin(Counter())
    engine.add_plugin(Early([]))
    assert engine.hook_order()["after_step"] == ["early", "counter"]


def test_disabled_plugins_is_a_read_only_view(make_engine):
    engine = make_engine(plugins=[Flaky("logger", critical=False, fail_at=1)])
    engine.fit(max_steps=2)
    assert "logger" in engine.disabled_plugins
    with pytest.raises(TypeError):
        engine.disabled_plugins["x"] = "y"  # type: ignore[index]


@pytest.mark.parametrize("value", [None, "", "0"])
def test_trace_is_off_unless_the_env_var_is_set_to_something_else_than_0(
    make_engine, monkeypatch, value
):
    import structlog

    if value is None:
        monkeypatch.delenv("HOOKLOOP_TRACE_PLUGINS", raising=False)
    else:
        monkeypatch.setenv("HOOKLOOP_TRACE_PLUGINS", value)
    with structlog.testing.capture_logs() as logs:
        make_engine(plugins=[Counter()]).fit(max_steps=2)
    assert not [e for e in logs if e["event"] == "hook_call"]


def test_plugin_costs_are_bounded_by_the_time_spent(make_engine):
    engine = make_engine(plugins=[Wrapper([]), Returns(), Counter()])
    start = time.perf_counter()
    engine.fit(max_steps=3)
    elapsed = time.perf_counter() - start
    seconds = engine.hooks.seconds_by_plugin()
    assert set(seconds) == {"wrapper", "returns", "counter"}
    assert all(s >= 0.0 for s in seconds.values())
    assert sum(seconds.values()) <= elapsed


class Shout:
    """A wrapper that upper-cases the results of what it wraps; critical unless told."""

    name = "shout"

    def __init__(self, critical: bool = True, fail: str = "") -> None:
        self.critical, self.fail = critical, fail

    @hookimpl(wrapper=True)
    def after_step(self, state):
        if self.fail == "before":
            raise OSError("before yield")
        result = yield
        if self.fail == "after":
            raise OSError("after yield")
        return [f"{r}!" for r in result]


def test_a_wrapper_can_change_what_the_hook_returns(make_engine):
    engine = make_engine(plugins=[Shout(), Returns()])
    assert engine.call_hook("after_step", engine=engine, state=engine.state) == ["0!"]


def test_a_wrapper_can_turn_an_error_into_a_result(make_engine):
    class Rescue:
        name = "rescue"

        @hookimpl(wrapper=True)
        def after_step(self):
            try:
                yield
            except PluginError:
                return ["rescued"]

    engine = make_engine(plugins=[Rescue(), Flaky("broken", critical=True, fail_at=0)])
    assert engine.call_hook("after_step", engine=engine, state=engine.state) == ["rescued"]


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_failing_non_critical_wrapper_is_disabled_and_the_hook_still_answers(make_engine, when):
    engine = make_engine(plugins=[Shout(critical=False, fail=when), Returns()])
    assert engine.call_hook("after_step", engine=engine, state=engine.state) == [0]
    reason = engine.disabled_plugins["shout"]
    assert reason == f"failed in hook 'after_step': OSError: {when} yield"
    assert engine.call_hook("after_step", engine=engine, state=engine.state) == [0]
    assert engine.hook_order()["after_step"] == ["returns"]


def test_a_wrapper_that_does_not_yield_once_is_named(make_engine):
    class NoYield:
        name = "no_yield"

        @hookimpl(wrapper=True)
        def after_step(self):
            return
            yield  # a generator that ends before its first yield

    class TwoYields:
        name = "two_yields"

        @hookimpl(wrapper=True)
        def after_step(self):
            yield
            yield

    for plugin, says in [(NoYield(), "did not yield"), (TwoYields(), "yielded twice")]:
        engine = make_engine(plugins=[plugin, Returns()])
        with pytest.raises(RuntimeError, match=f"wrapper '{plugin.name}' of 'after_step' {says}"):
            engine.call_hook("after_step", engine=engine, state=engine.state)


def test_a_critical_plugin_failing_to_save_or_load_its_state_stops_the_run(make_engine):
    class Broken:
        name = "broken"

        @hookimpl
        def on_save_checkpoint(self):
            raise OSError("cannot save")

        @hookimpl
        def on_load_checkpoint(self, saved):
            raise OSError("cannot load")

    engine = make_engine(plugins=[Broken()])
    with pytest.raises(PluginError, match="'broken' failed in hook 'on_save_checkpoint'"):
        engine.plugin_states()
    with pytest.raises(PluginError, match="'broken' failed in hook 'on_load_checkpoint'"):
        engine.load_plugin_states({"broken": {}})


def test_a_plugin_disabled_inside_a_nested_hook_call_is_not_called_again(make_engine):
    from hookloop import hookspec

    @hookspec
    def thirdparty_ping():
        """Ping every plugin."""

    Specs = types.ModuleType("thirdparty_ping_specs")
    Specs.thirdparty_ping = thirdparty_ping
    calls = []

    class Caller:
        name = "caller"
        hookspecs = Specs

        @hookimpl
        def after_step(self, engine):
            calls.append("caller")
            engine.call_hook("thirdparty_ping")

    class Fragile:
        name = "fragile"
        critical = False

        @hookimpl
        def thirdparty_ping(self):
            raise OSError("ping failed")

        @hookimpl
        def after_step(self):
            calls.append("fragile")

    engine = make_engine(plugins=[Caller(), Fragile()])
    engine.call_hook("after_step", engine=engine, state=engine.state)
    # "fragile" was disabled while "caller" ran; its after_step, next in line, is skipped.
    assert calls == ["caller"] and "fragile" in engine.disabled_plugins


def test_a_critical_wrapper_failing_before_it_yields_is_named_with_the_hook(make_engine):
    engine = make_engine(plugins=[Shout(fail="before"), Returns()])
    with pytest.raises(PluginError) as info:
        engine.call_hook("after_step", engine=engine, state=engine.state)
    assert str(info.value) == "plugin 'shout' failed in hook 'after_step': OSError: before yield"


def test_a_firstresult_hook_nobody_answers_returns_none(make_engine):
    from hookloop import hookspec

    @hookspec(firstresult=True)
    def thirdparty_maybe():
        """Maybe answer."""

    Specs = types.ModuleType("thirdparty_maybe_specs")
    Specs.thirdparty_maybe = thirdparty_maybe

    class Silent:
        hookspecs = Specs

        @hookimpl
        def thirdparty_maybe(self):
            return None

    engine = make_engine(plugins=[Silent()])
    assert engine.call_hook("thirdparty_maybe") is None


def test_saving_plugin_states_hands_each_plugin_the_engine_and_state(make_engine):
    class Remembers:
        name = "remembers"

        @hookimpl
        def on_save_checkpoint(self, engine, state):
            return {"step": state.step, "same_engine": engine is seen_engine}

    engine = make_engine(plugins=[Remembers()])
    seen_engine = engine
    engine.fit(max_steps=2)
    assert engine.plugin_states() == {"remembers": {"step": 2, "same_engine": True}}


# --- the dispatcher checks its callers ------------------------------------------------------


class Reads:
    """A non-critical plugin that reads `state` in after_step (a logger, say)."""

    name = "reads"
    critical = False

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.calls = 0

    @hookimpl
    def after_step(self, state):
        self.calls += 1
        if self.fail is not None:
            raise self.fail


@pytest.mark.parametrize("first_call", [True, False])
def test_a_call_missing_an_argument_names_hook_and_argument_and_disables_nothing(
    make_engine, first_call
):
    plugin = Reads()
    engine = make_engine(plugins=[plugin])
    if not first_call:  # the plan is cached: the later, wrong call must still be caught
        engine.call_hook("after_step", engine=engine, state=engine.state)
    with pytest.raises(TypeError) as info:
        engine.call_hook("after_step", engine=engine)
    assert str(info.value) == (
        "hook 'after_step' called without argument 'state' (its spec takes engine, state)"
    )
    assert not isinstance(info.value, PluginError)
    assert engine.disabled_plugins == {}
    assert "reads" in engine.hook_order()["after_step"]
    engine.call_hook("after_step", engine=engine, state=engine.state)
    assert plugin.calls == (2 if not first_call else 1)


@pytest.mark.parametrize("first_call", [True, False])
def test_a_call_with_an_unknown_argument_names_hook_and_argument(make_engine, first_call):
    engine = make_engine(plugins=[Reads()])
    if not first_call:
        engine.call_hook("after_step", engine=engine, state=engine.state)
    with pytest.raises(TypeError, match="hook 'after_step' called with unknown argument 'stat'"):
        engine.call_hook("after_step", engine=engine, state=engine.state, stat=1)
    assert engine.disabled_plugins == {}


def test_a_swapped_argument_is_caught_when_a_plugin_trips_on_it(make_engine):
    # same number of arguments, so only the plugin's KeyError reveals the bad call
    plugin = Reads()
    engine = make_engine(plugins=[plugin])
    engine.call_hook("after_step", engine=engine, state=engine.state)
    with pytest.raises(TypeError, match="without argument 'state'"):
        engine.call_hook("after_step", engine=engine, stat=engine.state)
    assert engine.disabled_plugins == {} and plugin.calls == 1


def test_on_exception_and_call_each_check_their_callers_too(make_engine):
    engine = make_engine(plugins=[Reads()])
    with pytest.raises(TypeError, match="hook 'on_exception' called without argument 'error'"):
        engine.hooks.call_logging_errors("on_exception", engine=engine, state=engine.state)
    with pytest.raises(
        TypeError, match="hook 'on_load_checkpoint' called without argument 'saved'"
    ):
        engine.hooks.call_each("on_load_checkpoint", {"reads": {"engine": engine, "state": 1}})


@pytest.mark.parametrize("error", [KeyError("state"), TypeError("bad operand")])
def test_a_plugins_own_key_or_type_error_still_disables_it(make_engine, error):
    engine = make_engine(plugins=[Reads(fail=error)])
    engine.call_hook("after_step", engine=engine, state=engine.state)
    reason = engine.disabled_plugins["reads"]
    assert reason.startswith("failed in hook 'after_step': ") and type(error).__name__ in reason
