"""Per-plugin failure policy and cost accounting."""

from __future__ import annotations

import time

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
    assert "logger" in engine.hooks.disabled and "logger" not in engine.hook_order()["after_step"]
    (entry,) = engine.journal.read()
    assert entry["event"] == "plugin_disabled" and entry["plugin"] == "logger"
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


def test_wrapper_hooks_run_through_pluggy(make_engine):
    seen = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def after_step(self, state):
            seen.append(("enter", state.step))
            result = yield
            seen.append(("exit", state.step))
            return result

    make_engine(plugins=[Wrapper(), Counter()]).fit(max_steps=2)
    assert seen == [("enter", 1), ("exit", 1), ("enter", 2), ("exit", 2)]
