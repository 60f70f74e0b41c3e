"""What a plugin author needs to test a plugin in a real `fit()`: a tiny model, fixed data and
an engine factory, plus `--set` overrides that shrink a language-model run to seconds.

    from hookloop.testing import make_engine, plugin

    def test_budget_stops_the_run():
        budget = plugin("token_budget", max_tokens=100)
        state = make_engine(plugins=[budget]).fit(max_steps=50)
        assert state.should_stop == "token budget of 100 tokens reached"

Installing hookloop also installs a pytest plugin (`hookloop.pytest_plugin`, through the
`pytest11` entry point) that offers the same as fixtures: `make_engine` and `load_plugin`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from hookloop.engine import Engine
from hookloop.errors import PluginError
from hookloop.loading import load_plugins

__all__ = ["TINY_RUN", "TinyRegression", "make_engine", "mse_loss", "plugin", "regression_batches"]

TINY_RUN = (
    "model.d_model=32",
    "model.n_heads=2",
    "model.n_layers=1",
    "model.d_ff=64",
    "model.max_seq_len=32",
    "data.seq_len=32",
    "data.batch_size=8",
    "data.val_batches=2",
    "training.max_steps=4",
    "training.device=cpu",
    "training.threads=1",
    "plugins.schedule.warmup_steps=0",
)
"""`--set` overrides that make a `hookloop train` run take seconds: a one-layer model of width
32, four steps, two validation batches, no warmup (a config file may set a longer one). Later
overrides of the same key win."""


class TinyRegression(torch.nn.Module):
    """A two-layer MLP: a step takes well under a millisecond."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(width, width)
        self.fc2 = torch.nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`fc2(tanh(fc1(x)))`."""
        return self.fc2(torch.tanh(self.fc1(x)))


def mse_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean squared error of `model(x)` against `y`: the loss_fn for TinyRegression."""
    x, y = batch
    return F.mse_loss(model(x), y)


def regression_batches(
    n: int, *, batch_size: int = 4, width: int = 8, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`n` fixed random `(x, y)` batches."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch_size, width, generator=g), torch.randn(batch_size, width, generator=g))
        for _ in range(n)
    ]


def make_engine(*, batches: int = 6, lr: float = 0.1, seed: int = 0, **kwargs: Any) -> Engine:
    """An `Engine` over `TinyRegression`, SGD and `batches` fixed batches (two validation
    batches); further keyword arguments (`plugins=`, `run_dir=`, `accumulate=`, ...) go to
    `Engine`."""
    torch.manual_seed(seed)
    model = TinyRegression()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    kwargs.setdefault("loss_fn", mse_loss)
    kwargs.setdefault("val_data", regression_batches(2, seed=seed + 1))
    return Engine(model, optimizer, regression_batches(batches, seed=seed), **kwargs)


def plugin(name: str, **options: Any) -> Any:
    """The installed plugin `name`, loaded by its entry-point name with `options`, exactly as
    a run's `[plugins.<name>]` table would load it; pass it to `Engine(plugins=[...])`
    (`.plugin` is the instance)."""
    found = [p for p in load_plugins({name: options}) if getattr(p, "name", None) == name]
    if not found:
        raise PluginError(f"plugin {name!r} did not load; is its package installed?")
    return found[0]
