"""pytest fixtures for testing hookloop plugins, available in any project that installs
hookloop (registered through the `pytest11` entry point; see `hookloop.testing`).

    def test_budget_stops_the_run(make_engine, load_plugin):
        budget = load_plugin("token_budget", max_tokens=100)
        state = make_engine(plugins=[budget]).fit(max_steps=50)
        assert state.should_stop == "token budget of 100 tokens reached"

torch is imported only when a test uses a fixture, so pytest starts as fast as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

__all__ = ["load_plugin", "make_engine"]


@pytest.fixture
def make_engine() -> Callable[..., Any]:
    """`hookloop.testing.make_engine`: an Engine over a tiny MLP and fixed batches; keyword
    arguments (`plugins=`, `run_dir=`, `batches=`, `lr=`, `seed=`, ...) as there."""
    from hookloop.testing import make_engine as factory

    return factory


@pytest.fixture
def load_plugin() -> Callable[..., Any]:
    """`hookloop.testing.plugin`: load an installed plugin by name with options."""
    from hookloop.testing import plugin

    return plugin
