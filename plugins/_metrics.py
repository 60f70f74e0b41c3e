"""Helpers shared by the built-in plugins (mostly the loggers: console, csv, tensorboard,
progress).

Not a plugin: no entry point. It keeps the loggers agreeing on what they report (the same
smoothed loss, the same perplexity), reads device values at most once per logged row, and
knows how long the current run is planned to be.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from hookloop import hookimpl

if TYPE_CHECKING:
    from hookloop import Engine, State

__all__ = [
    "METRIC_WRITERS",
    "ClosesAtEnd",
    "HostCopy",
    "LossEMA",
    "planned_steps",
    "step_copy",
    "step_values",
    "to_floats",
    "with_ppl",
]

METRIC_WRITERS = ("clip", "schedule", "eval", "throughput")
"""Plugins that write `state.metrics`; loggers declare `after = METRIC_WRITERS` so that they
run after them within a hook and see every value of the step."""


def planned_steps(engine: Engine) -> int | None:
    """The step the current `fit()` ends at if nothing stops it early: `max_steps`, or
    `epochs` times the steps per epoch when the data has a length (the smaller of the two
    when both are given); None when it cannot be known."""
    by_epochs = None
    if engine.max_epochs and hasattr(engine.train_data, "__len__"):
        by_epochs = engine.max_epochs * (len(engine.train_data) // engine.accumulate)
    limits = [n for n in (engine.max_steps, by_epochs) if n]
    return min(limits) if limits else None


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
        self.value = (
            None if saved is None else torch.tensor(saved, dtype=torch.float32, device=device)
        )


class HostCopy:
    """Scalar values on their way to the host: the copy is queued at once, read later.

    Numbers and CPU tensors are read immediately (about a microsecond each, waiting for
    nothing). CUDA scalars are stacked and copied with one non-blocking transfer into pinned
    memory, followed by an event, so `result()` waits only for the work queued before the
    copy, not for later steps: read a step later, it usually waits for nothing. Other
    devices are read in one blocking transfer per device. Entries that are neither numbers
    nor scalar tensors are dropped.
    """

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.floats: dict[str, float] = {}
        by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    continue
                if value.device.type == "cpu":
                    self.floats[key] = float(value.item())
                else:
                    by_device.setdefault(value.device, []).append((key, value))
            elif isinstance(value, (int, float)):  # bool is an int: True -> 1.0
                self.floats[key] = float(value)
        self._copies: list[tuple[list[str], torch.Tensor, Any]] = []
        for device, items in by_device.items():
            stacked = torch.stack([v.detach().reshape(()).double() for _, v in items])
            event = None
            if device.type == "cuda":
                host = stacked.to("cpu", non_blocking=True)  # lands in pinned memory
                event = torch.cuda.Event()
                event.record()
            else:
                host = stacked.cpu()
            self._copies.append(([k for k, _ in items], host, event))

    @property
    def ready(self) -> bool:
        """True when `result()` would not wait."""
        return all(event is None or event.query() for _, _, event in self._copies)

    def result(self) -> dict[str, float]:
        """The values as floats, waiting for the queued copies if they have not landed."""
        for keys, host, event in self._copies:
            if event is not None:
                event.synchronize()
            self.floats.update(zip(keys, host.tolist(), strict=True))
        self._copies.clear()
        return self.floats


def to_floats(values: Mapping[str, Any]) -> dict[str, float]:
    """Numbers and scalar tensors of `values` as floats, now (one sync per accelerator)."""
    return HostCopy(values).result()


def step_copy(state: State, ema: LossEMA) -> HostCopy:
    """Start copying what a logger reports for the step just finished: `loss`,
    `ema_loss` and every entry of `state.metrics`. Finish with `with_ppl(copy.result())`."""
    return HostCopy({"loss": state.loss, "ema_loss": ema.value, **state.metrics})


def with_ppl(values: dict[str, float]) -> dict[str, float]:
    """Add `ppl`, the exponential of `loss`, to a step's values."""
    if "loss" in values:
        values["ppl"] = math.exp(min(values["loss"], 700.0))
    return values


def step_values(state: State, ema: LossEMA) -> dict[str, float]:
    """Everything a logger reports for the step just finished, as floats, now: `loss`,
    `ema_loss`, `ppl` (exp of loss) and every entry of `state.metrics`."""
    return with_ppl(step_copy(state, ema).result())


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
