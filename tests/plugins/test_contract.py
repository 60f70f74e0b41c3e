"""Every plugin installed in the `hookloop` entry-point group keeps the plugin contract.

Parametrized over what discovery finds, so a new built-in (or the example package) is
covered the moment its entry point exists: constructible with default options, survives
`fit()` twice, its checkpoint state is JSON and round-trips, every hook method has a spec.
"""

from __future__ import annotations

import inspect
import json

import pytest

from hookloop import hookspecs
from hookloop.loading import discover, instantiate

PLUGINS = sorted(discover())


@pytest.fixture(params=PLUGINS)
def loaded(request):
    return instantiate(discover()[request.param], {})


def test_constructible_with_defaults_and_named_after_its_entry_point(loaded):
    assert getattr(loaded.plugin, "name", loaded.name) == loaded.name


def test_survives_fit_twice_and_state_round_trips(loaded, make_engine, tmp_path):
    engine = make_engine(batches=6, plugins=[loaded], run_dir=tmp_path / "run")
    engine.fit(max_steps=3)
    engine.fit(max_steps=6)
    assert engine.state.step == 6 and not engine.disabled_plugins
    saved = engine.plugin_states()
    assert json.loads(json.dumps(saved)) == saved  # JSON only, nothing pickled
    fresh = instantiate(discover()[loaded.name], {})
    other = make_engine(batches=6, plugins=[fresh], run_dir=tmp_path / "run2")
    other.load_plugin_states(saved)
    assert other.plugin_states() == saved


def test_every_hook_method_has_a_specification(loaded):
    known = {n for n, f in vars(hookspecs).items() if hasattr(f, "hookloop_spec")}
    extra = getattr(loaded.plugin, "hookspecs", None)
    if extra is not None:
        known |= {n for n, f in vars(extra).items() if hasattr(f, "hookloop_spec")}
    for name, method in inspect.getmembers(loaded.plugin, inspect.ismethod):
        if hasattr(method, "hookloop_impl"):
            assert name in known, f"{loaded.name}.{name} implements no known hook"


def test_options_are_keyword_only(loaded):
    params = inspect.signature(type(loaded.plugin)).parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params), loaded.name
