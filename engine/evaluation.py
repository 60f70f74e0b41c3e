"""The validation loss behind `Engine.evaluate()`: a token-weighted mean over batches."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch

from hookloop.errors import DataError

__all__ = ["mean_loss"]


def mean_loss(
    model: torch.nn.Module,
    batches: Iterable[Any],
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    *,
    prepare: Callable[[Any], Any],
    count_tokens: Callable[[Any], int],
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    max_batches: int | None = None,
) -> float:
    """The loss of `model` over `batches`, each batch weighted by its token count.

    The model is put in eval mode under `torch.no_grad()` and restored afterwards. The sum
    is kept on the device in float64 and read once at the end (one host sync).

    Raises:
        DataError: there is no batch to evaluate.
    """
    was_training = model.training
    model.eval()
    total: torch.Tensor | None = None
    count = 0
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                batch = prepare(batch)
                with autocast():
                    loss = loss_fn(model, batch).double()
                tokens = count_tokens(batch)
                total = loss * tokens if total is None else total + loss * tokens
                count += tokens
    finally:
        model.train(was_training)
    if total is None or count == 0:
        raise DataError("the validation data is empty; give it at least one batch")
    return float(total.item()) / count
