"""The mutable progress record of a run, shared by the engine and every plugin."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["State"]


@dataclass(slots=True)
class State:
    """Where a run is, what it last measured, and what plugins asked the loop to do.

    The engine advances the counters; plugins read them and write `metrics`, `skip_step`,
    `should_stop` and `exit_status`. A checkpoint saves the counters (`counters()`).
    """

    step: int = 0
    """Optimizer steps completed, skipped ones included. Advanced just before `after_step`."""
    epoch: int = 0
    """Completed passes over the training data, which is also the 0-based index of the pass
    in progress. Advanced just before `on_epoch_end`."""
    epoch_batch: int = 0
    """Micro-batches consumed in the current epoch: the data position a resume restarts from."""
    micro_step: int = 0
    """Micro-batches consumed since the run began, over all epochs."""
    tokens_seen: int = 0
    """Training tokens (elements of the input tensor) consumed since the run began."""
    loss: torch.Tensor | None = None
    """Mean training loss of the last step, a detached tensor: call `.item()` only to log it."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Values written by plugins during the current step; cleared before each `before_step`.
    Values may be tensors; loggers convert them when they log."""
    skip_step: bool = False
    """Set by a plugin in `after_backward` to skip `optimizer.step()`; reset every step."""
    should_stop: str | None = None
    """The reason a plugin asked the run to stop; the loop stops at the next step boundary."""
    exit_status: int = 0
    """The exit status for a command whose `fit()` this is: 0, or what a plugin that stopped
    the run for an outside reason set (the preemption plugin: 128 + the signal number, as a
    shell reports a signal), so a job script relaunches a run that did not finish."""

    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop after the current step, keeping the first reason given."""
        if self.should_stop is None:
            self.should_stop = reason

    def counters(self) -> dict[str, int]:
        """The counters a checkpoint saves, as plain ints."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "epoch_batch": self.epoch_batch,
            "micro_step": self.micro_step,
            "tokens_seen": self.tokens_seen,
        }

    def load_counters(self, counters: dict[str, int]) -> None:
        """Restore the counters written by `counters()`."""
        for name in ("step", "epoch", "epoch_batch", "micro_step", "tokens_seen"):
            setattr(self, name, int(counters[name]))
