"""Flag a loss spike or a gradient-norm spike, and warn, roll back or stop.

    [plugins.divergence]
    action = "warn"        # "warn" | "rollback" | "stop"
    loss_factor = 2.0      # a spike: loss > loss_factor x its moving average
    grad_factor = 10.0     # a spike: grad norm > grad_factor x its moving average
    beta = 0.98            # smoothing of the moving averages (exponential, per step)
    warmup_steps = 100     # steps measured before spikes are judged
    lr_factor = 0.5        # rollback: multiply the lr (and the schedule's peak) by this
    max_rollbacks = 3      # rollback: stop after this many rollbacks in the run

In `after_backward` it compares the step's loss and pre-clip gradient norm with their
exponential moving averages. A spike is journaled as `divergence` with both numbers; spikes
do not enter the averages. Then, by `action`: `warn` logs and continues; `rollback` skips
the step and, in `after_step`, reloads the last valid checkpoint with the lr multiplied by
`lr_factor` (journal: `rollback`); `stop` skips the step, journals `stop` and raises
`TrainingHalted`. Steps with a non-finite loss or norm are left to `nan_guard`.

The averages and counters are saved in checkpoints, so a resumed run judges spikes against
the same history; a rollback restores the averages of the checkpoint it goes back to.

With `warn` the step's loss and norm are copied to the host without waiting and judged one
step late (the journal keeps the spiking step's number). With `rollback`/`stop` and a fused
optimizer the spike test runs on the device, the optimizer skips a spiking update itself,
and the host acts a step late, as `nan_guard` does; with other optimizers the values are
read on the host before the update and it acts at once.

Hooks: `after_backward`, `after_step`, `on_fit_end`, `on_exception`, `on_save_checkpoint`,
`on_load_checkpoint`. Cost: a few float operations on the host; the loss and norm come from
`hookloop.plugins.stepvalues.measure.step_tensors`, measured once per step for all guards. No host
sync with `warn`, nor with a fused optimizer; else one per step shared with `nan_guard`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from hookloop import hookimpl
from hookloop.options import check_choice, check_int, check_number
from hookloop.plugins.guarding.policy import GuardPolicy
from hookloop.plugins.stepvalues.measure import LateRead, step_scalars, step_tensors
from hookloop.update import can_skip_on_device

if TYPE_CHECKING:
    from hookloop import Engine, State

__all__ = ["Divergence"]

ACTIONS = ("warn", "rollback", "stop")


class Divergence:
    """Detect loss and gradient-norm spikes against their moving averages."""

    name = "divergence"
    # After nan_guard: a non-finite step is its business, and it decides first. After clip:
    # reuse the pre-clip norm it measured. Before checkpoint: roll back before a checkpoint
    # of the diverged step could be written.
    after = ("nan_guard", "clip")
    before = ("checkpoint",)

    def __init__(
        self,
        *,
        action: str = "warn",
        loss_factor: float = 2.0,
        grad_factor: float = 10.0,
        beta: float = 0.98,
        warmup_steps: int = 100,
        lr_factor: float = 0.5,
        max_rollbacks: int = 3,
    ) -> None:
        check_choice(self.name, "action", action, ACTIONS)
        check_number(self.name, "loss_factor", loss_factor, low=1.0, open_low=True)
        check_number(self.name, "grad_factor", grad_factor, low=1.0, open_low=True)
        for option, value in (("beta", beta), ("lr_factor", lr_factor)):
            check_number(self.name, option, value, low=0, high=1, open_low=True, open_high=True)
        check_int(self.name, "warmup_steps", warmup_steps, minimum=0)
        check_int(self.name, "max_rollbacks", max_rollbacks, minimum=1)
        self.action, self.loss_factor, self.grad_factor = (
            action,
            float(loss_factor),
            float(grad_factor),
        )
        self.beta, self.warmup_steps = float(beta), warmup_steps
        self.policy = GuardPolicy(
            self.name, action=action, lr_factor=float(lr_factor), max_rollbacks=max_rollbacks
        )
        self.loss_avg: float | None = None
        self.grad_avg: float | None = None
        self.seen = 0  # healthy steps folded into the averages
        self.spikes = 0
        self.late = LateRead()  # the previous step's values, on their way to the host

    @hookimpl
    def after_backward(self, engine: Engine, state: State) -> None:
        self._settle(engine, state)  # the averages now include the step before this one
        judged = self.seen >= self.warmup_steps and self.loss_avg is not None
        on_device = engine.scaler is None and can_skip_on_device(engine.optimizer)
        if self.action == "warn" or not judged or on_device:
            t = step_tensors(engine, state)
            if self.action == "warn" or not judged:  # nothing to skip: judge it a step late
                self.late.put(torch.stack([t.loss, t.total]), (state.step, False))
                return
            assert self.loss_avg is not None and self.grad_avg is not None
            spike = (t.loss > self.loss_factor * self.loss_avg) | (
                t.total > self.grad_factor * self.grad_avg
            )
            engine.skip_update_if(spike)  # the device keeps the spike out of the weights
            self.late.put(torch.stack([t.loss, t.total, spike.float()]), (state.step, True))
            return
        s = step_scalars(engine, state)  # the fallback: read now, before the update
        self._judge(engine, state, s.loss, s.grad_norm)

    def _settle(self, engine: Engine, state: State) -> None:
        """Judge the step whose values were read late; it was the step before this one."""
        taken = self.late.take()
        if taken is not None:
            values, (step, flagged) = taken
            flag = bool(values[2]) if flagged else None
            self._judge(engine, state, values[0], values[1], step=step, flagged=flag)

    def _judge(
        self,
        engine: Engine,
        state: State,
        loss: float,
        norm: float,
        *,
        step: int | None = None,
        flagged: bool | None = None,
    ) -> None:
        if not (math.isfinite(loss) and math.isfinite(norm)):
            return
        reason = self._spike(loss, norm)
        if flagged is not None:  # the device decided, and skipped the update: follow it
            if not flagged:
                reason = None
            elif reason is None:  # a float32 comparison on the threshold itself
                reason = f"loss {loss:.4g} or gradient norm {norm:.4g} at its limit"
        if reason is None:
            self._fold(loss, norm)
            self.policy.healthy()
            return
        self.spikes += 1
        self.policy.record(
            engine,
            state,
            "divergence",
            reason,
            step=step,
            action=self.action,
            loss=loss,
            loss_avg=self.loss_avg,
            grad_norm=norm,
            grad_avg=self.grad_avg,
        )
        self.policy.bad_step(engine, state, reason, step=step)

    def _spike(self, loss: float, norm: float) -> str | None:
        """Why this step is a spike, or None when it is not (or still in warm-up)."""
        if self.seen < self.warmup_steps or self.loss_avg is None or self.grad_avg is None:
            return None
        if loss > self.loss_factor * self.loss_avg:
            return f"loss {loss:.4g} > {self.loss_factor:g} x its average {self.loss_avg:.4g}"
        if norm > self.grad_factor * self.grad_avg:
            return (
                f"gradient norm {norm:.4g} > {self.grad_factor:g} x its average {self.grad_avg:.4g}"
            )
        return None

    def _fold(self, loss: float, norm: float) -> None:
        b = self.beta
        self.loss_avg = loss if self.loss_avg is None else b * self.loss_avg + (1 - b) * loss
        self.grad_avg = norm if self.grad_avg is None else b * self.grad_avg + (1 - b) * norm
        self.seen += 1

    # After the spiked step, before checkpoint (declared above).
    @hookimpl
    def after_step(self, engine: Engine, state: State) -> None:
        spikes = self.spikes
        try:
            self.policy.roll_back_if_due(engine, state)
        finally:  # the reload restored the averages of that checkpoint; keep our count
            self.spikes = spikes

    # Last, after csv closed its file and checkpoint saved: the verdict of the last step.
    @hookimpl(trylast=True)
    def on_fit_end(self, engine: Engine, state: State) -> None:
        self._settle(engine, state)
        self.after_step(engine, state)

    @hookimpl
    def on_exception(self) -> None:
        self.late.take()  # values still in flight belong to a run that is over

    @hookimpl
    def on_save_checkpoint(self) -> dict[str, Any]:
        return {
            "loss_avg": self.loss_avg,
            "grad_avg": self.grad_avg,
            "seen": self.seen,
            "spikes": self.spikes,
            "rollbacks": self.policy.rollbacks,
        }

    @hookimpl
    def on_load_checkpoint(self, saved: dict[str, Any]) -> None:
        self.loss_avg, self.grad_avg = saved.get("loss_avg"), saved.get("grad_avg")
        self.seen = int(saved.get("seen", 0))
        self.spikes = int(saved.get("spikes", 0))
        self.policy.restore(saved)
