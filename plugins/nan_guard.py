"""Catch a non-finite loss or gradient before the optimizer applies it.

    [plugins.nan_guard]
    action = "stop"       # "stop" | "skip" | "rollback"
    max_skips = 3         # skip: stop after this many consecutive skipped steps
    max_rollbacks = 3     # rollback: stop after this many rollbacks in the run
    lr_factor = 0.5       # rollback: multiply the lr (and the schedule's peak) by this

In `after_backward` of every step it checks the step's loss and the global gradient norm
(non-finite if any gradient element is). On a bad step it names the parameters whose
gradients went bad, journals `nan_detected`, and then, by `action`:

- `stop`: saves an emergency checkpoint of the weights, which are still those before the bad
  step, to `run_dir/checkpoints/emergency-step-N` (when the run has a directory), journals
  `stop` and raises `TrainingHalted`, which the CLI prints as one line. Raising (rather than
  requesting a stop) makes the failure impossible to miss and still gives every plugin its
  `on_exception`.
- `skip`: sets `state.skip_step`, so weights and optimizer state are untouched; journals
  `step_skipped`; after `max_skips` bad steps in a row it stops as above.
- `rollback`: skips the step, then in `after_step` reloads the last valid checkpoint,
  multiplies the lr by `lr_factor` and continues (journal: `rollback`); after
  `max_rollbacks` it stops. Its own counters survive the reload.

Under fp16 the GradScaler already skips steps whose gradients overflow, so there only a
non-finite *loss* counts as bad.

Hooks: `after_backward`, `after_step`, `on_save_checkpoint`, `on_load_checkpoint`.
Cost: one pass over the gradients for their norm (reused from `clip` when it ran first) and
one host sync per step, shared with `divergence` (see `hookloop.plugins._guards`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import structlog

from hookloop import hookimpl
from hookloop.options import check_choice, check_int, check_number
from hookloop.plugins._guards import (
    TrainingHalted,
    bad_gradient_names,
    emergency_save,
    rollback,
    step_scalars,
)

if TYPE_CHECKING:
    from hookloop import Engine, State

__all__ = ["NanGuard"]

log = structlog.get_logger(__name__)

ACTIONS = ("stop", "skip", "rollback")


class NanGuard:
    """Stop, skip or roll back a step whose loss or gradients are not finite."""

    name = "nan_guard"
    # Before clip: clipping multiplies every gradient by max_norm / NaN, so after it the
    # bad parameters could no longer be told apart. Before checkpoint: a rollback in
    # after_step must happen before a checkpoint of the bad step could be written.
    before = ("clip", "checkpoint")

    def __init__(
        self,
        *,
        action: str = "stop",
        max_skips: int = 3,
        max_rollbacks: int = 3,
        lr_factor: float = 0.5,
    ) -> None:
        check_choice(self.name, "action", action, ACTIONS)
        check_int(self.name, "max_skips", max_skips, minimum=1)
        check_int(self.name, "max_rollbacks", max_rollbacks, minimum=1)
        check_number(self.name, "lr_factor", lr_factor, low=0, high=1, open_low=True)
        self.action, self.max_skips, self.max_rollbacks = action, max_skips, max_rollbacks
        self.lr_factor = float(lr_factor)
        self.skipped = 0  # bad steps skipped in the run
        self.consecutive = 0  # bad steps in a row
        self.rollbacks = 0
        self._pending: str | None = None  # the reason of a rollback due in after_step

    @hookimpl
    def after_backward(self, engine: Engine, state: State) -> None:
        scalars = step_scalars(engine, state)
        bad_loss = not math.isfinite(scalars.loss)
        if scalars.finite or (engine.scaler is not None and not bad_loss):
            self.consecutive = 0
            return
        names = bad_gradient_names(engine.model)
        reason = f"loss is {scalars.loss}" if bad_loss else "loss is finite"
        reason += f", gradient norm is {scalars.grad_norm}"
        if names and "(max |grad|" in names[0]:
            reason += f"; every gradient element is finite, the largest: {', '.join(names)}"
        elif names:
            reason += f"; non-finite gradients in {', '.join(names)}"
        engine.journal.record(
            "nan_detected",
            step=state.step,
            reason=reason,
            plugin=self.name,
            loss=scalars.loss,
            grad_norm=scalars.grad_norm,
            parameters=names,
        )
        state.skip_step = True
        self.consecutive += 1
        if self.action == "skip" and self.consecutive <= self.max_skips:
            self.skipped += 1
            engine.journal.record(
                "step_skipped",
                step=state.step,
                reason=reason,
                plugin=self.name,
                consecutive=self.consecutive,
            )
            return
        if self.action == "rollback" and self.rollbacks < self.max_rollbacks:
            self._pending = reason
            return
        if self.action == "skip":
            reason += f"; {self.consecutive} bad steps in a row (max_skips={self.max_skips})"
        elif self.action == "rollback":
            reason += (
                f"; already rolled back {self.rollbacks} times (max_rollbacks={self.max_rollbacks})"
            )
        self._halt(engine, state, reason)

    # After_step of the bad step, before checkpoint (declared above): go back to the last
    # good checkpoint. The optimizer did not step (skip_step), so nothing bad was applied.
    @hookimpl
    def after_step(self, engine: Engine, state: State) -> None:
        if self._pending is None:
            return
        reason, self._pending = self._pending, None
        counters = self.checkpoint_state()
        self.rollbacks += 1
        counters["rollbacks"] = self.rollbacks
        try:
            rollback(engine, state, lr_factor=self.lr_factor, reason=reason, by=self.name)
        finally:
            self.restore(counters)  # the reload restored our old counters; ours are newer

    def _halt(self, engine: Engine, state: State, reason: str) -> None:
        saved = emergency_save(engine, state, reason)
        if saved:
            reason += f"; the weights before this step are saved in {saved}"
        engine.journal.record("stop", step=state.step, reason=reason, plugin=self.name)
        raise TrainingHalted(f"nan_guard: step {state.step}: {reason}", checkpoint=saved)

    def checkpoint_state(self) -> dict[str, Any]:
        """The counters, as stored in a checkpoint."""
        return {
            "skipped": self.skipped,
            "consecutive": self.consecutive,
            "rollbacks": self.rollbacks,
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """Set the counters from `checkpoint_state()` output."""
        self.skipped = int(saved.get("skipped", 0))
        self.consecutive = int(saved.get("consecutive", 0))
        self.rollbacks = int(saved.get("rollbacks", 0))

    @hookimpl
    def on_save_checkpoint(self) -> dict[str, Any]:
        return self.checkpoint_state()

    @hookimpl
    def on_load_checkpoint(self, saved: dict[str, Any]) -> None:
        self.restore(saved)
