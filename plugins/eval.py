"""Evaluate on the validation data every N steps, at each epoch end and at the end of a run.

    [plugins.eval]
    every = 200          # evaluate every N optimizer steps; 0 = never by step count
    epoch_end = true     # evaluate after each pass over the training data
    final = true         # evaluate when fit() ends, unless this step was just evaluated
    max_batches = 0      # cap on validation batches per evaluation; 0 = all of them

Each evaluation calls `engine.evaluate(max_batches=...)`, which fires `on_eval_end` (where
loggers and `early_stop` see the metrics), and writes `val_loss` and `val_ppl` into
`state.metrics`, so plugins ordered after `eval` in the same `after_step` see them too.
A step is evaluated at most once. Without validation data the plugin logs a warning once
and does nothing.

Hooks: `on_fit_start`, `after_step`, `on_epoch_end`, `on_fit_end`. Cost: nothing between
evaluations; an evaluation costs a forward pass over the validation batches and one sync.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from hookloop import hookimpl
from hookloop.options import check_bool, check_int

if TYPE_CHECKING:
    from hookloop import Engine, State

__all__ = ["Eval"]

log = structlog.get_logger(__name__)


class Eval:
    """Run `engine.evaluate()` on a schedule and publish the validation metrics."""

    name = "eval"
    writes_metrics = True  # loggers (reads_metrics) run after it within a hook

    def __init__(
        self, *, every: int = 200, epoch_end: bool = True, final: bool = True, max_batches: int = 0
    ) -> None:
        check_int(self.name, "every", every, minimum=0)
        check_int(self.name, "max_batches", max_batches, minimum=0)
        check_bool(self.name, "epoch_end", epoch_end)
        check_bool(self.name, "final", final)
        self.every, self.epoch_end, self.final = every, epoch_end, final
        self.max_batches = max_batches or None
        self.active = True
        self.last_step: int | None = None

    @hookimpl
    def on_fit_start(self, engine: Engine) -> None:
        self.active = engine.val_data is not None
        if not self.active:
            log.warning("eval_off", reason="the engine has no val_data; nothing is evaluated")

    def evaluate(self, engine: Engine, state: State) -> None:
        """Evaluate now unless this step already was, and publish the metrics."""
        if not self.active or self.last_step == state.step:
            return
        self.last_step = state.step
        metrics = engine.evaluate(max_batches=self.max_batches)
        state.metrics.update(metrics)

    @hookimpl
    def after_step(self, engine: Engine, state: State) -> None:
        if self.every and state.step % self.every == 0:
            self.evaluate(engine, state)

    @hookimpl
    def on_epoch_end(self, engine: Engine, state: State) -> None:
        if self.epoch_end:
            self.evaluate(engine, state)

    @hookimpl
    def on_fit_end(self, engine: Engine, state: State) -> None:
        if self.final and state.step > 0:
            self.evaluate(engine, state)
