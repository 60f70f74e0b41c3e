"""What the `nan_guard` and `divergence` plugins share: one host read per step, the names
of the parameters whose gradients went bad, what to do about a bad step (`GuardPolicy`:
warn, skip, roll back to the last good checkpoint, or stop with an emergency save).

**Cost.** Deciding whether a step is healthy needs two numbers on the host: the loss and the
global gradient norm. `step_scalars()` reads both with a single device-to-host copy per
step and caches them on the engine, so the guards together cost one host sync per step,
however many of them ask. The norm is the one the `clip` plugin reports (`grad_norm`, before
clipping); when no plugin wrote it yet, the per-parameter norms come from one fused pass
over the gradients (`torch._foreach_norm`, as in `clip_grad_norm_`), travel to the host in
the same copy as the loss, are combined there and written to `state.metrics["grad_norm"]`.
A non-finite gradient makes the global norm non-finite, so the norm is also the fused
finiteness flag of every gradient: parameters are only named on the failure path.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
import torch

from hookloop.errors import HookloopError

if TYPE_CHECKING:
    from hookloop.engine import Engine
    from hookloop.state import State

__all__ = [
    "GuardPolicy",
    "StepScalars",
    "TrainingHalted",
    "bad_gradient_names",
    "emergency_save",
    "rollback",
    "step_scalars",
]

log = structlog.get_logger("hookloop")

_CACHE: weakref.WeakKeyDictionary[Any, tuple[torch.Tensor, StepScalars]] = (
    weakref.WeakKeyDictionary()
)


class TrainingHalted(HookloopError):
    """A guard stopped the run: the loss or the gradients went bad and the policy says stop.

    `checkpoint` is the emergency checkpoint the guard already wrote (None if it wrote
    none); the `checkpoint` plugin then leaves its own save-on-exception out, so `latest`
    keeps pointing at the guard's checkpoint, which resumes after the bad batch.
    """

    def __init__(self, message: str, *, checkpoint: str | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


@dataclass(frozen=True, slots=True)
class StepScalars:
    """The current step's loss and pre-clip global gradient norm, as host floats."""

    loss: float
    grad_norm: float

    @property
    def finite(self) -> bool:
        """True when both the loss and every gradient are finite."""
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


def step_scalars(engine: Engine, state: State) -> StepScalars:
    """The loss and gradient norm of the current step on the host: the one sync per step.

    Call in `after_backward` (gradients must still exist). The norm is the pre-clip
    `state.metrics["grad_norm"]` when `clip` ran first; otherwise the per-parameter norms
    come from one fused `torch._foreach_norm` (under fp16 after unscaling), travel to the
    host together with the loss, are combined there, and the result is written to
    `state.metrics["grad_norm"]` as a float. Later calls in the same step, from any plugin,
    return the cached values without touching the device. Under DDP the values are averaged
    over the ranks first, so every rank takes the same decision.
    """
    assert state.loss is not None, "step_scalars() is for after_backward"
    cached = _CACHE.get(engine)
    if cached is not None and cached[0] is state.loss:
        return cached[1]
    loss = state.loss.detach().float().reshape(())
    norm = state.metrics.get("grad_norm")
    if isinstance(norm, torch.Tensor):  # clip ran first: reuse its pre-clip norm
        values = torch.stack([loss, norm.detach().float().reshape(())])
    else:
        engine.unscale_gradients()
        grads = [p.grad for p in engine.model.parameters() if p.grad is not None]
        values = (
            torch.stack([loss, *torch._foreach_norm(grads)]).float() if grads else loss.reshape(1)
        )
    if engine.world_size > 1:
        # Every rank must take the same decision: average the loss (the gradients, hence the
        # norms, are already all-reduced and equal on every rank).
        import torch.distributed as dist

        dist.all_reduce(values)
        values = values / engine.world_size
    host = _to_host(values)
    if isinstance(norm, torch.Tensor):
        total = host[1]
    else:
        total = math.sqrt(sum(v * v for v in host[1:]))  # overflows to inf, like the norm
        state.metrics["grad_norm"] = total
    scalars = StepScalars(loss=host[0], grad_norm=total)
    _CACHE[engine] = (state.loss, scalars)
    return scalars


def _to_host(values: torch.Tensor) -> list[float]:
    """The one device-to-host copy (and so the one sync) a step costs the guards."""
    return values.tolist()


def bad_gradient_names(model: torch.nn.Module, limit: int = 8) -> list[str]:
    """Names of the parameters whose gradient holds a NaN or an infinity; when every element
    is finite (the norm overflowed), the few with the largest gradients, with their size.
    For the failure path only: one sync per parameter."""
    grads = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
    names = [name for name, g in grads if not bool(torch.isfinite(g).all())]
    if not names and grads:
        peaks = sorted(((float(g.abs().max()), name) for name, g in grads), reverse=True)
        return [f"{name} (max |grad| {peak:.3g})" for peak, name in peaks[:3]]
    return names if len(names) <= limit else [*names[:limit], f"... {len(names) - limit} more"]


def emergency_save(engine: Engine, state: State, reason: str) -> str | None:
    """Save the current (still good) weights to `run_dir/checkpoints/emergency-step-N`.

    Returns:
        The checkpoint path as a string, or None when the run has no directory or this
        process is not the main one.
    """
    if engine.run_dir is None or not engine.is_main_process:
        return None
    from hookloop.checkpoint import CHECKPOINTS_DIR, save_checkpoint

    directory = engine.run_dir / CHECKPOINTS_DIR / f"emergency-step-{state.step:08d}"
    path = save_checkpoint(engine, directory, extra={"emergency": reason})
    engine.journal.record("checkpoint_saved", step=state.step, reason=reason, path=str(path))
    return str(path)


def rollback(engine: Engine, state: State, *, lr_factor: float, reason: str, by: str) -> int:
    """Reload the last valid checkpoint, multiply the learning rate, and keep going.

    The model, optimizer, step counter, RNG and plugin states come back from the checkpoint.
    The data position (epoch, batch within the epoch, micro-steps, tokens) stays where it
    is: the live data iterator has moved on, and the run continues with the batches after
    the ones that went bad rather than replaying them. Each group's `lr` and its schedule
    peak `initial_lr` become their values before the rollback times `lr_factor`.

    Returns:
        The step the run continues from.

    Raises:
        TrainingHalted: the run has no directory or no valid checkpoint to go back to.
    """
    from hookloop.checkpoint import latest_valid_checkpoint, load_checkpoint

    path = latest_valid_checkpoint(engine.run_dir) if engine.run_dir is not None else None
    if path is None:
        raise TrainingHalted(
            f"{by}: {reason}; cannot roll back: no valid checkpoint in "
            f"{engine.run_dir or '(no run directory)'}; enable the checkpoint plugin with a "
            "run directory, or use action 'stop' or 'skip'"
        )
    position = {k: getattr(state, k) for k in ("epoch", "epoch_batch", "micro_step", "tokens_seen")}
    rates = [(g["lr"], g.get("initial_lr")) for g in engine.optimizer.param_groups]
    from_step = state.step
    load_checkpoint(engine, path)
    for name, value in position.items():
        setattr(state, name, value)
    for group, (lr, peak) in zip(engine.optimizer.param_groups, rates, strict=True):
        group["lr"] = lr * lr_factor
        if peak is not None:
            group["initial_lr"] = peak * lr_factor
    engine.journal.record(
        "rollback",
        step=state.step,
        reason=reason,
        plugin=by,
        from_step=from_step,
        checkpoint=str(path),
        lr_factor=lr_factor,
    )
    return state.step


class GuardPolicy:
    """What a guard does about a bad step, by its `action`, with the counters that bound it.

    - `warn`: nothing beyond the guard's own journal entry; the step is applied.
    - `skip`: the step is not applied (`state.skip_step`), journaled as `step_skipped`;
      after `max_skips` bad steps in a row, stop.
    - `rollback`: the step is not applied; in `after_step` the run goes back to the last
      valid checkpoint with the lr times `lr_factor` (`rollback()`); after `max_rollbacks`
      rollbacks in the run, stop.
    - `stop`: the step is not applied, `stop` is journaled and `TrainingHalted` raised; with
      `save_on_stop`, the weights (still those before the bad step) are saved first.

    The counters (`skipped`, `consecutive`, `rollbacks`) belong in the guard's checkpoint
    state (`counters()` / `restore()`); a rollback keeps the newer counters rather than the
    reloaded ones.
    """

    def __init__(
        self,
        by: str,
        *,
        action: str,
        lr_factor: float,
        max_rollbacks: int,
        max_skips: int = 0,
        save_on_stop: bool = False,
    ) -> None:
        self.by, self.action, self.lr_factor = by, action, lr_factor
        self.max_skips, self.max_rollbacks, self.save_on_stop = (
            max_skips,
            max_rollbacks,
            save_on_stop,
        )
        self.skipped = 0  # bad steps skipped in the run
        self.consecutive = 0  # bad steps in a row
        self.rollbacks = 0  # rollbacks in the run
        self._rollback_reason: str | None = None  # a rollback due in after_step

    def healthy(self) -> None:
        """Record a good step (ends a run of consecutive bad ones)."""
        self.consecutive = 0

    def bad_step(self, engine: Engine, state: State, reason: str) -> None:
        """Act on a bad step, from the guard's `after_backward`.

        Raises:
            TrainingHalted: the action is `stop`, or skips or rollbacks ran out.
        """
        if self.action == "warn":
            return
        state.skip_step = True  # do not apply the update that went bad
        self.consecutive += 1
        if self.action == "skip" and self.consecutive <= self.max_skips:
            self.skipped += 1
            self.record(engine, state, "step_skipped", reason, consecutive=self.consecutive)
            return
        if self.action == "rollback" and self.rollbacks < self.max_rollbacks:
            self._rollback_reason = reason
            return
        if self.action == "skip":
            reason += f"; {self.consecutive} bad steps in a row (max_skips={self.max_skips})"
        elif self.action == "rollback":
            reason += (
                f"; already rolled back {self.rollbacks} times (max_rollbacks={self.max_rollbacks})"
            )
        self.halt(engine, state, reason)

    def halt(self, engine: Engine, state: State, reason: str) -> None:
        """Journal `stop` and raise `TrainingHalted`, after an emergency save if asked."""
        saved = emergency_save(engine, state, reason) if self.save_on_stop else None
        if saved:
            reason += f"; the weights before this step are saved in {saved}"
        self.record(engine, state, "stop", reason)
        raise TrainingHalted(f"{self.by}: step {state.step}: {reason}", checkpoint=saved)

    def record(self, engine: Engine, state: State, event: str, reason: str, **fields: Any) -> None:
        """Journal a guard's decision: `event` at this step, why, by which plugin, and more."""
        engine.journal.record(event, step=state.step, reason=reason, plugin=self.by, **fields)

    def roll_back_if_due(self, engine: Engine, state: State) -> None:
        """Run the rollback a bad step asked for, from the guard's `after_step` (which must
        run before `checkpoint`'s, so that no checkpoint of the bad step is written)."""
        if self._rollback_reason is None:
            return
        reason, self._rollback_reason = self._rollback_reason, None
        self.rollbacks += 1
        kept = self.counters()
        try:
            rollback(engine, state, lr_factor=self.lr_factor, reason=reason, by=self.by)
        finally:
            self.restore(kept)  # the reload restored older counters; ours are newer

    def counters(self) -> dict[str, int]:
        """The counters, for the guard's checkpoint state."""
        return {
            "skipped": self.skipped,
            "consecutive": self.consecutive,
            "rollbacks": self.rollbacks,
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """Set the counters from a checkpoint state (missing ones are 0)."""
        self.skipped = int(saved.get("skipped", 0))
        self.consecutive = int(saved.get("consecutive", 0))
        self.rollbacks = int(saved.get("rollbacks", 0))
