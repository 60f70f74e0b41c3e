"""Scalar values on their way from the device to the host."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from hookloop import State

__all__ = [
    "HostCopy",
    "LossEMA",
    "step_copy",
    "step_values",
    "to_floats",
    "with_ppl",
]


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
