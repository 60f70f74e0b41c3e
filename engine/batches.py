"""How the loop draws its micro-batches: resumable epochs, accumulation groups, tokens, devices."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch

__all__ = ["count_tokens", "epoch_batches", "move_to", "step_groups"]


def epoch_batches(data: Iterable[Any], epoch: int, start: int) -> Iterator[Any]:
    """The micro-batches of `epoch` from position `start` (batches already consumed).

    Data that defines `iter_epoch(epoch, start)` starts there directly; data with
    `set_epoch(epoch)` (a `DistributedSampler`-style loader) is told the epoch; any other
    iterable is replayed and its first `start` batches skipped.
    """
    iter_epoch = getattr(data, "iter_epoch", None)
    if iter_epoch is not None:
        return iter(iter_epoch(epoch, start))
    set_epoch = getattr(data, "set_epoch", None)
    if set_epoch is not None:
        set_epoch(epoch)
    batches = iter(data)
    if start:
        next(itertools.islice(batches, start, start), None)  # skip what was consumed
    return batches


def step_groups(batches: Iterator[Any], accumulate: int) -> Iterator[tuple[Any, ...]]:
    """Micro-batches in groups of `accumulate`, one group per optimizer step.

    A trailing group shorter than `accumulate` is dropped, so every step sees the same
    number of micro-batches.
    """
    if accumulate == 1:
        for batch in batches:
            yield (batch,)
        return
    while len(group := tuple(itertools.islice(batches, accumulate))) == accumulate:
        yield group


def count_tokens(batch: Any) -> int:
    """Elements of the first tensor in a batch: tokens for `(inputs, targets)` LM batches."""
    while not isinstance(batch, torch.Tensor):
        if isinstance(batch, (tuple, list)) and batch:
            batch = batch[0]
        elif isinstance(batch, dict) and batch:
            batch = next(iter(batch.values()))
        else:
            return 0
    return batch.numel()


def move_to(batch: Any, device: torch.device) -> Any:
    """A tensor, or tensors nested in tuples, lists and dicts, moved to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    return batch
