"""Helpers shared by the logging plugins (console, csv, tensorboard, progress).

Not a plugin: no entry point. It keeps the loggers agreeing on what they report: the same
smoothed loss, the same perplexity, and one host sync per logged row instead of one per value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from hookloop import hookimpl

if TYPE_CHECKING:
    from hookloop import State

__all__ = ["METRIC_WRITERS", "ClosesAtEnd", "LossEMA", "step_values", "to_floats"]

METRIC_WRITERS = ("clip", "schedule", "eval", "throughput")
"""Plugins that write `state.metrics`; loggers declare `after = METRIC_WRITERS` so that they
run after them within a hook and see every value of the step."""


class LossEMA:
    """An exponential moving average of the training loss, kept as a tensor (no host sync).

    It starts at the first loss it sees, so it needs no bias correction.
    """

    def __init__(self, beta: float = 0.9) -> None:
        self.beta = beta
        self.value: torch.Tensor | None = None

    def update(self, loss: torch.Tensor | None) -> None:
        """Fold one step's loss into the average."""
        if loss is None:
            return
        loss = loss.detach().float()
        self.value = loss if self.value is None else torch.lerp(self.value, loss, 1.0 - self.beta)

    def save(self) -> float | None:
        """The average as a JSON number (a float32 value, so it round-trips bit for bit)."""
        return None if self.value is None else float(self.value.item())

    def load(self, saved: float | None, device: torch.device) -> None:
        """Restore a value written by `save()`."""
        self.value = None if saved is None else torch.tensor(saved, dtype=torch.float32, device=device)


def to_floats(values: Mapping[str, Any]) -> dict[str, float]:
    """Convert a dict of numbers and scalar tensors to floats with one sync per accelerator.

    Entries that are neither (None, strings, non-scalar tensors) are dropped. CPU tensors are
    read one by one (`.item()` costs about a microsecond there and waits for nothing).
    """
    out: dict[str, float] = {}
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for key, value in values.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            if value.device.type == "cpu":
                out[key] = float(value.item())
            else:
                by_device.setdefault(value.device, []).append((key, value))
        elif isinstance(value, (int, float)):  # bool is an int: True -> 1.0
            out[key] = float(value)
    for items in by_device.values():
        stacked = torch.stack([v.detach().reshape(()).double() for _, v in items])
        out.update(zip([k for k, _ in items], stacked.tolist(), strict=True))
    return out


def step_values(state: State, ema: LossEMA) -> dict[str, float]:
    """Everything a logger reports for the step just finished, as floats: `loss`,
    `ema_loss`, `ppl` (exp of loss) and every entry of `state.metrics`."""
    values = to_floats({"loss": state.loss, "ema_loss": ema.value, **state.metrics})
    if "loss" in values:
        values["ppl"] = math.exp(min(values["loss"], 700.0))
    return values


class ClosesAtEnd:
    """Base for plugins holding a file, writer or bar: `close()` runs when `fit()` ends,
    normally or by an exception."""

    def close(self) -> None:
        """Release what the plugin holds; must be safe to call twice."""
        raise NotImplementedError

    @hookimpl
    def on_fit_end(self) -> None:
        """Close at a normal end."""
        self.close()

    @hookimpl
    def on_exception(self) -> None:
        """Close when the loop raised, so buffered lines reach the disk."""
        self.close()
