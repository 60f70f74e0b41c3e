"""What the `nan_guard` and `divergence` plugins share: what to do about a bad step
(`GuardPolicy`: warn, skip, roll back to the last good checkpoint, or stop with an emergency
save), and the step's values they judge it by (`hookloop.plugins.stepvalues.measure`).

**Cost.** The guards measure a step on the device (`step_tensors()`: one fused pass over the
gradients, shared with `clip`). When the optimizer can skip an update on the device (fused
Adam/AdamW, see `hookloop.update`), a bad step's update is skipped there, nothing waits for
the device, and the guard reads its values one step late (`LateRead`) to journal, stop or
roll back. Otherwise it reads them before the update (`step_scalars()`: one host sync per
step, however many guards ask) and acts at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from hookloop.errors import HookloopError

if TYPE_CHECKING:
    from hookloop.engine import Engine
    from hookloop.state import State

__all__ = ["GuardPolicy", "TrainingHalted", "emergency_save", "rollback"]

log = structlog.get_logger("hookloop")


class TrainingHalted(HookloopError):
    """A guard stopped the run: the loss or the gradients went bad and the policy says stop.

    `checkpoint` is the emergency checkpoint the guard already wrote (None if it wrote
    none); the `checkpoint` plugin then leaves its own save-on-exception out, so `latest`
    keeps pointing at the guard's checkpoint, which resumes after the bad batch.
    """

    def __init__(self, message: str, *, checkpoint: str | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


def emergency_save(engine: Engine, state: State, reason: str) -> str | None:
    """Save the current (still good) weights to `run_dir/checkpoints/emergency-step-N`.

    Under several ranks every rank calls this together (the guards decide on global values,
    so all ranks halt at the same step): the tensors are gathered and rank 0 writes.

    Returns:
        The checkpoint path as a string, or None when the run has no directory or this
        process is not the main one.
    """
    if engine.run_dir is None or (engine.world_size == 1 and not engine.is_main_process):
        return None
    from hookloop.checkpoint import CHECKPOINTS_DIR, DEFAULT_CHECKSUM, save_checkpoint

    # Written as the checkpoint plugin writes its own, with its checksum algorithm.
    loaded = engine.plugins.get("checkpoint")
    enabled = loaded is not None and "checkpoint" not in engine.disabled_plugins
    checksum = getattr(loaded.plugin, "checksum", DEFAULT_CHECKSUM) if enabled else DEFAULT_CHECKSUM
    directory = engine.run_dir / CHECKPOINTS_DIR / f"emergency-step-{state.step:08d}"
    path = save_checkpoint(engine, directory, extra={"emergency": reason}, checksum=checksum)
    engine.journal.record("checkpoint_saved", step=state.step, reason=reason, path=str(path))
    return str(path) if engine.is_main_process else None


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
    from hookloop.distributed import on_rank0

    # Rank 0 picks, so every rank reloads the same checkpoint.
    path = on_rank0(
        lambda: latest_valid_checkpoint(engine.run_dir) if engine.run_dir is not None else None
    )
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

    def bad_step(
        self, engine: Engine, state: State, reason: str, *, step: int | None = None
    ) -> None:
        """Act on a bad step, from the guard's `after_backward`: the current step, or (with
        `step`, read one step late) an earlier one whose update the device already skipped.

        Raises:
            TrainingHalted: the action is `stop`, or skips or rollbacks ran out.
        """
        if self.action == "warn":
            return
        late = step is not None
        step = state.step if step is None else step
        self.consecutive += 1
        if self.action == "skip" and self.consecutive <= self.max_skips:
            state.skip_step = state.skip_step or not late  # late: this step is not the bad one
            self.skipped += 1
            self.record(
                engine, state, "step_skipped", reason, step=step, consecutive=self.consecutive
            )
            return
        state.skip_step = True  # do not apply the update (late: nor the next one, unjudged)
        if self.action == "rollback" and self.rollbacks < self.max_rollbacks:
            self._rollback_reason = reason
            return
        if self.action == "skip":
            reason += f"; {self.consecutive} bad steps in a row (max_skips={self.max_skips})"
        elif self.action == "rollback":
            reason += (
                f"; already rolled back {self.rollbacks} times (max_rollbacks={self.max_rollbacks})"
            )
        self.halt(engine, state, reason, step=step)

    def halt(self, engine: Engine, state: State, reason: str, *, step: int | None = None) -> None:
        """Journal `stop` and raise `TrainingHalted`, after an emergency save if asked. `step`
        is the bad step (default: the current one); the save is of the current weights."""
        step = state.step if step is None else step
        saved = emergency_save(engine, state, reason) if self.save_on_stop else None
        if saved:
            reason += f"; the weights before this step are saved in {saved}"
        self.record(engine, state, "stop", reason, step=step)
        raise TrainingHalted(f"{self.by}: step {step}: {reason}", checkpoint=saved)

    def record(
        self,
        engine: Engine,
        state: State,
        event: str,
        reason: str,
        *,
        step: int | None = None,
        **fields: Any,
    ) -> None:
        """Journal a guard's decision: `event` at `step` (default: this step), why, by which
        plugin, and more."""
        step = state.step if step is None else step
        engine.journal.record(event, step=step, reason=reason, plugin=self.by, **fields)

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
