"""Entry-point discovery, enabling, options, ordering and registration of plugins."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from hookloop import Engine, PluginError, hookimpl, loading
from hookloop.loading import LoadedPlugin, PluginInfo


def fake_entry_points(*specs: tuple[str, str, str]):
    """A stand-in for importlib.metadata.entry_points: (name, target, distribution)."""
    eps = [
        SimpleNamespace(
            name=name,
            value=target,
            dist=SimpleNamespace(metadata={"Name": dist}, version="1.0"),
        )
        for name, target, dist in specs
    ]
    return lambda group: eps if group == "hookloop" else []


def test_example_package_is_discovered_from_its_entry_point():
    found = loading.discover()
    info = found["token_budget"]
    assert info.target == "hookloop_example.plugin:TokenBudget"
    assert info.distribution == "hookloop-example" and not info.builtin


def test_every_builtin_entry_point_points_into_hookloop_plugins():
    for info in loading.discover().values():
        if info.builtin:
            assert info.target.startswith(f"hookloop.plugins.{info.name}:")


def test_two_distributions_with_one_plugin_name_is_an_error(monkeypatch):
    monkeypatch.setattr(
        loading,
        "entry_points",
        fake_entry_points(("clip", "a:Clip", "pkg-a"), ("clip", "b:Clip", "pkg-b")),
    )
    with pytest.raises(PluginError, match="two plugins are named 'clip'.*pkg-a.*pkg-b"):
        loading.discover()


def test_unknown_plugin_lists_the_available_ones():
    with pytest.raises(PluginError) as info:
        loading.load_plugins({"token_budgt": {}})
    message = str(info.value)
    assert "unknown plugin 'token_budgt'" in message
    assert "did you mean 'token_budget'" in message and "available plugins:" in message


def test_bad_option_names_the_plugin_and_the_option():
    with pytest.raises(
        PluginError,
        match="plugin 'token_budget' has no option 'max_token'.*did you mean 'max_tokens'",
    ):
        loading.load_plugins({"token_budget": {"max_token": 3}})
    with pytest.raises(PluginError, match="token_budget: option max_tokens must be"):
        loading.load_plugins({"token_budget": {"max_tokens": -1}})


def test_options_table_enables_and_configures_a_plugin():
    (plugin,) = [
        p
        for p in loading.load_plugins({"token_budget": {"max_tokens": 7}})
        if p.name == "token_budget"
    ]
    assert plugin.plugin.max_tokens == 7 and plugin.origin == "hookloop-example 0.1.0"


def test_disable_wins_and_autoload_env_var_stops_third_party_discovery(monkeypatch):
    assert "token_budget" in [p.name for p in loading.load_plugins()]
    assert "token_budget" not in [p.name for p in loading.load_plugins(disable=["token_budget"])]
    monkeypatch.setenv("HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "token_budget" not in [p.name for p in loading.load_plugins()]
    # naming it explicitly still loads it, as pytest's -p does
    assert "token_budget" in [p.name for p in loading.load_plugins({"token_budget": {}})]


def test_plugins_from_config_reads_enable_disable_and_tables():
    names = [p.name for p in loading.plugins_from_config({"disable": ["token_budget"]})]
    assert "token_budget" not in names
    with pytest.raises(PluginError, match="plugins.disable must be a list"):
        loading.plugins_from_config({"disable": "token_budget"})
    with pytest.raises(PluginError, match=r"plugins.token_budget must be a table"):
        loading.plugins_from_config({"token_budget": 3})


def test_discovery_imports_no_plugin_module_and_import_hookloop_no_optional_package():
    code = (
        "import sys, hookloop, hookloop.loading as L\n"
        "found = L.discover()\n"
        "assert 'token_budget' in found\n"
        "bad = [m for m in sys.modules if m.startswith('hookloop_example') or m.startswith("
        "'hookloop.plugins.')]\n"
        "optional = [m for m in ('torch', 'tqdm', 'matplotlib', 'tensorboard', 'tokenizers', "
        "'numpy') if m in sys.modules]\n"
        "print(bad, optional)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []"


class Named:
    def __init__(self, name: str, before=(), after=()):
        self.name, self.before, self.after = name, before, after
        self.calls: list[str] = []

    @hookimpl
    def after_step(self, engine):
        engine.config.setdefault("order", []).append(self.name)


def test_declared_before_and_after_resolve_one_deterministic_order(make_engine):
    plugins = [
        Named("logger", after=("clip", "schedule")),
        Named("clip"),
        Named("schedule", before=("clip",)),
        Named("other"),
    ]
    engine = make_engine(plugins=plugins, config={})
    engine.fit(max_steps=1)
    assert engine.config["order"] == ["schedule", "clip", "logger", "other"]
    assert engine.hook_order()["after_step"] == ["schedule", "clip", "logger", "other"]


def test_a_metrics_reader_runs_after_every_metrics_writer(make_engine):
    reader, writer, other = Named("logger"), Named("lr"), Named("timer")
    reader.reads_metrics = True
    writer.writes_metrics = other.writes_metrics = True
    engine = make_engine(plugins=[reader, writer, Named("plain"), other], config={})
    engine.fit(max_steps=1)
    assert engine.config["order"] == ["lr", "plain", "timer", "logger"]


def test_tryfirst_and_trylast_still_pin_the_ends(make_engine):
    class Last:
        name = "last"

        @hookimpl(trylast=True)
        def after_step(self, engine):
            engine.config.setdefault("order", []).append("last")

    engine = make_engine(plugins=[Last(), Named("a"), Named("b", before=("a",))], config={})
    engine.fit(max_steps=1)
    assert engine.config["order"] == ["b", "a", "last"]


def test_an_order_cycle_is_an_error(make_engine):
    with pytest.raises(PluginError, match="cycle among a .*b "):
        make_engine(plugins=[Named("a", after=("b",)), Named("b", after=("a",))])


def test_two_plugins_under_one_name_is_an_error(make_engine):
    with pytest.raises(PluginError, match="two plugins are registered under the name 'a'"):
        make_engine(plugins=[Named("a"), Named("a")])


def test_a_misspelled_hook_is_an_error_not_dead_code(make_engine):
    class Typo:
        @hookimpl
        def after_stepp(self, state):
            pass

    with pytest.raises(PluginError, match="'typo' implements a hook that no specification"):
        make_engine(plugins=[Typo()])


def test_wrong_hook_arguments_are_an_error(make_engine):
    class WrongArgs:
        @hookimpl
        def after_step(self, model):
            pass

    with pytest.raises(PluginError, match="'wrongargs' cannot be registered"):
        make_engine(plugins=[WrongArgs()])


def test_third_party_hookspec_is_added_and_called_in_a_real_fit(make_engine):
    """The example package adds `token_budget_exhausted`; another plugin implements it."""
    heard = []

    class Notifier:
        name = "notifier"

        @hookimpl
        def token_budget_exhausted(self, state, budget):
            heard.append((state.step, budget, state.should_stop))

    (budget,) = [
        p
        for p in loading.load_plugins({"token_budget": {"max_tokens": 100}})
        if p.name == "token_budget"
    ]
    engine = make_engine(plugins=[budget, Notifier()])
    state = engine.fit(max_steps=50)
    assert state.step == 4 and state.tokens_seen == 128  # 32 tokens a step
    assert heard == [(4, 100, "token budget of 100 tokens reached")]
    assert engine.plugins["token_budget"].origin == "hookloop-example 0.1.0"


def test_plugin_name_falls_back_to_the_class_name():
    class MyThing:
        pass

    assert loading.plugin_name(MyThing()) == "mything"
    assert loading.plugin_name(Named("x")) == "x"


def test_loaded_plugin_records_keep_their_origin(make_engine):
    record = LoadedPlugin("a", Named("a"), origin="pkg 2.0")
    engine = make_engine(plugins=[record])
    assert engine.plugins["a"].origin == "pkg 2.0"


def test_plugin_info_origin():
    info = PluginInfo("x", "m:X", "hookloop", "0.1.0")
    assert info.builtin and info.origin == "hookloop 0.1.0"


def test_engine_class_is_one_object_through_every_import_route():
    import hookloop
    import hookloop.engine

    assert hookloop.Engine is hookloop.engine.Engine is Engine


def test_declared_order_holds_among_trylast_and_tryfirst_implementations(make_engine):
    """pluggy alone calls trylast implementations in registration order and plain ones in
    reverse; hookloop's calling order follows the declarations in every group."""

    class Pinned(Named):
        def __init__(self, name, pin, **kw):
            super().__init__(name, **kw)
            self.pin = pin

    def plugin(name, pin, **kw):
        marker = hookimpl(trylast=pin == "last", tryfirst=pin == "first")

        class P(Pinned):
            @marker
            def after_step(self, engine):
                engine.config.setdefault("order", []).append(self.name)

        return P(name, pin, **kw)

    plugins = [
        plugin("csv", "last", after=("console",)),
        plugin("console", "last"),
        plugin("guard", "first", after=("nan",)),
        plugin("nan", "first"),
        plugin("mid", None),
    ]
    engine = make_engine(plugins=plugins, config={})
    engine.fit(max_steps=1)
    expected = ["nan", "guard", "mid", "console", "csv"]
    assert engine.config["order"] == expected
    assert engine.hook_order()["after_step"] == expected


def test_tryfirst_runs_before_plugins_declared_ahead_of_it(make_engine):
    class First:
        name = "first"

        @hookimpl(tryfirst=True)
        def after_step(self):
            pass

    engine = make_engine(plugins=[Named("a"), Named("b"), First()])
    assert engine.hook_order()["after_step"] == ["first", "a", "b"]


@pytest.mark.parametrize("value", ["", "0"])
def test_autoload_stays_on_when_the_env_var_is_empty_or_0(monkeypatch, value):
    monkeypatch.setenv("HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD", value)
    assert "token_budget" in [p.name for p in loading.load_plugins()]


def test_an_unknown_plugin_with_none_installed_says_so(monkeypatch):
    monkeypatch.setattr(loading, "entry_points", fake_entry_points())
    with pytest.raises(PluginError) as info:
        loading.load_plugins(enable=["clip"])
    assert str(info.value) == "unknown plugin 'clip'; available plugins: none installed"
