"""Shared fixtures. In importlib mode tests/ is not on sys.path, so helpers live here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F


class TinyRegression(torch.nn.Module):
    """A two-layer MLP: a step takes well under a millisecond."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(width, width)
        self.fc2 = torch.nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def mse_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean squared error of `model(x)` against `y`: the loss_fn for TinyRegression."""
    x, y = batch
    return F.mse_loss(model(x), y)


def regression_batches(n: int, *, batch_size: int = 4, width: int = 8, seed: int = 0) -> list:
    """`n` fixed random `(x, y)` batches."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch_size, width, generator=g), torch.randn(batch_size, width, generator=g))
        for _ in range(n)
    ]


@pytest.fixture
def make_engine() -> Callable[..., Any]:
    """Build an Engine over TinyRegression and fixed batches; keyword args go to Engine."""
    from hookloop import Engine

    def make(*, batches: int = 6, lr: float = 0.1, seed: int = 0, **kwargs: Any) -> Engine:
        torch.manual_seed(seed)
        model = TinyRegression()
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        kwargs.setdefault("loss_fn", mse_loss)
        kwargs.setdefault("val_data", regression_batches(2, seed=seed + 1))
        return Engine(model, optimizer, regression_batches(batches, seed=seed), **kwargs)

    return make


# --- language-model recipe ------------------------------------------------------------------

LM_TEXT = "".join(
    f"def f{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(400)
)
"""A small, very regular text: a tiny model learns it within a few dozen steps."""

TINY_LM = [
    "model.d_model=32", "model.n_heads=2", "model.n_layers=1", "model.d_ff=64",
    "model.max_seq_len=32", "data.seq_len=32", "data.batch_size=8", "training.max_steps=4",
    "training.device=cpu", "training.threads=1",
]
"""`--set` overrides for a model and run small enough for a test."""


@pytest.fixture
def lm_data(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A prepared char-level data directory of `LM_TEXT` (90/10 split)."""
    from hookloop.prepare import prepare_texts, split_text

    out = tmp_path_factory.mktemp("lm") / "data"
    train, val = split_text(LM_TEXT, 0.1)
    prepare_texts(train, val, out, tokenizer="char", source="conftest.LM_TEXT")
    return out


@pytest.fixture
def tiny_lm_overrides(lm_data: Any) -> list[str]:
    """`--set` overrides for a tiny model trained on `lm_data`."""
    return [*TINY_LM, f"data.path={lm_data}"]
