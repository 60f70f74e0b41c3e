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

With a fused optimizer (`AdamW(fused=True)`, outside fp16) the check is a flag on the
device that makes the optimizer skip a bad update itself (`Engine.skip_update_if`), and the
host reads it **one step late**, in the next step's `after_backward` or at the end of fit():
the journal and message keep the bad step's number; `stop` and `rollback` leave that next
step unapplied too, and the emergency checkpoint is named after it (with the weights from
before the bad step). Other optimizers cannot skip on the device: there the step's values
are read on the host before the update and the guard acts at once.

Hooks: `after_backward`, `after_step`, `on_fit_end`, `on_exception`, `on_save_checkpoint`,
`on_load_checkpoint`. Cost: one fused pass over the gradients for their norms (reused by
`clip`), a few scalar ops on the device; no host sync with a fused optimizer, else one per
step, shared with `divergence` (see `hookloop.plugins.guarding.policy`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from hookloop import hookimpl
from hookloop.options import check_choice, check_int, check_number
from hookloop.plugins.guarding.policy import GuardPolicy
from hookloop.plugins.stepvalues.measure import (
    LateRead,
    bad_gradient_names,
    names_from_norms,
    nonfinite,
    step_scalars,
    step_tensors,
)
from hookloop.update import can_skip_on_device

if TYPE_CHECKING:
    from hookloop import Engine, State

__all__ = ["NanGuard"]

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
        self.policy = GuardPolicy(
            self.name,
            action=action,
            lr_factor=float(lr_factor),
            max_rollbacks=max_rollbacks,
            max_skips=max_skips,
            save_on_stop=True,
        )
        self.late = LateRead()  # the previous step's verdict, on its way to the host

    @hookimpl
    def after_backward(self, engine: Engine, state: State) -> None:
        self._settle(engine, state)
        if engine.scaler is None and can_skip_on_device(engine.optimizer):
            # The device keeps a bad update out of the weights; the host learns of it at
            # the next step (or the end of fit), without waiting now.
            t = step_tensors(engine, state)
            found = nonfinite(t.loss + t.total)
            engine.skip_update_if(found)
            self.late.put(
                torch.cat([torch.stack([found, t.total]), t.values]), (state.step, t.per_parameter)
            )
            return
        s = step_scalars(engine, state)  # the fallback: read now, before the update
        bad = not s.finite and (engine.scaler is None or not math.isfinite(s.loss))
        # Under fp16 the GradScaler skips overflowed gradients itself: only the loss counts.
        self._judge(
            engine, state, bad, s.loss, s.grad_norm, lambda: bad_gradient_names(engine.model)
        )

    def _settle(self, engine: Engine, state: State) -> None:
        """Judge the step whose verdict was read late; it was the step before this one."""
        taken = self.late.take()
        if taken is None:
            return
        (found, norm, loss, *norms), (step, per_parameter) = taken
        names = lambda: names_from_norms(engine.model, norms) if per_parameter else []  # noqa: E731
        self._judge(engine, state, found != 0.0, loss, norm, names, step=step)

    def _judge(
        self,
        engine: Engine,
        state: State,
        bad: bool,
        loss: float,
        norm: float,
        names_of: Callable[[], list[str]],
        *,
        step: int | None = None,
    ) -> None:
        if not bad:
            self.policy.healthy()
            return
        names = names_of()
        bad_loss = not math.isfinite(loss)
        reason = f"loss is {loss}" if bad_loss else "loss is finite"
        reason += f", gradient norm is {norm}"
        if names and "|grad|" in names[0]:
            reason += f"; every gradient element is finite, the largest: {', '.join(names)}"
        elif names:
            reason += f"; non-finite gradients in {', '.join(names)}"
        self.policy.record(
            engine,
            state,
            "nan_detected",
            reason,
            step=step,
            loss=loss,
            grad_norm=norm,
            parameters=names,
        )
        self.policy.bad_step(engine, state, reason, step=step)

    # After_step of the bad step, before checkpoint (declared above): go back to the last
    # good checkpoint. The optimizer did not step (skip_step), so nothing bad was applied.
    @hookimpl
    def after_step(self, engine: Engine, state: State) -> None:
        self.policy.roll_back_if_due(engine, state)

    # Last, after csv closed its file and checkpoint saved: the verdict of the last step.
    @hookimpl(trylast=True)
    def on_fit_end(self, engine: Engine, state: State) -> None:
        self._settle(engine, state)
        self.policy.roll_back_if_due(engine, state)

    @hookimpl
    def on_exception(self) -> None:
        self.late.take()  # a verdict still in flight belongs to a run that is over

    @hookimpl
    def on_save_checkpoint(self) -> dict[str, Any]:
        return self.policy.counters()

    @hookimpl
    def on_load_checkpoint(self, saved: dict[str, Any]) -> None:
        self.policy.restore(saved)
