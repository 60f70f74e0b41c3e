"""Stop training when a validation metric has stopped improving.

    [plugins.early_stop]
    monitor = "val_loss"   # the evaluation metric to watch
    mode = "min"           # "min": lower is better; "max": higher is better
    patience = 5           # evaluations without improvement before stopping
    min_delta = 0.0        # an improvement must beat the best value by more than this

It listens to every evaluation (`on_eval_end`, fired by `engine.evaluate()`, e.g. from the
`eval` plugin). After `patience` evaluations in a row without an improvement larger than
`min_delta`, it requests a stop and records an `early_stop` event in the run journal. The
best value, its step and the count of bad evaluations are saved in checkpoints, so a resumed
run keeps counting where it left off.

Hooks: `on_eval_end`, `on_save_checkpoint`, `on_load_checkpoint`. Cost: nothing per step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from hookloop import PluginError, hookimpl
from hookloop.options import check_choice, check_int, check_number

if TYPE_CHECKING:
    from hookloop import Engine, State

__all__ = ["EarlyStop"]


@dataclass(slots=True)
class _Progress:
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0


class EarlyStop:
    """Request a stop after `patience` evaluations without improvement of `monitor`."""

    name = "early_stop"

    def __init__(
        self,
        *,
        monitor: str = "val_loss",
        mode: str = "min",
        patience: int = 5,
        min_delta: float = 0.0,
    ) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise PluginError(f"early_stop: option monitor must be a metric name, got {monitor!r}")
        check_choice(self.name, "mode", mode, ("min", "max"))
        check_int(self.name, "patience", patience, minimum=1)
        check_number(self.name, "min_delta", min_delta, low=0)
        self.monitor, self.mode, self.patience, self.min_delta = (
            monitor,
            mode,
            patience,
            float(min_delta),
        )
        self.progress = _Progress()

    def improved(self, value: float) -> bool:
        """Whether `value` beats the best so far by more than `min_delta`."""
        best = self.progress.best
        if best is None:
            return True
        return (
            value < best - self.min_delta if self.mode == "min" else value > best + self.min_delta
        )

    @hookimpl
    def on_eval_end(self, engine: Engine, state: State, metrics: dict[str, float]) -> None:
        if self.monitor not in metrics:
            raise PluginError(
                f"early_stop: monitor {self.monitor!r} is not an evaluation metric; "
                f"available: {', '.join(sorted(metrics))}"
            )
        value = float(metrics[self.monitor])
        p = self.progress
        if self.improved(value):
            p.best, p.best_step, p.bad_evals = value, state.step, 0
            return
        p.bad_evals += 1
        if p.bad_evals >= self.patience and state.should_stop is None:
            reason = (
                f"{self.monitor} has not improved on {p.best:.6g} (step {p.best_step}) by more "
                f"than {self.min_delta} for {p.bad_evals} evaluations"
            )
            state.request_stop(f"early stop: {reason}")
            engine.journal.record(
                "early_stop",
                step=state.step,
                reason=reason,
                monitor=self.monitor,
                best=p.best,
                best_step=p.best_step,
                value=value,
                patience=self.patience,
            )

    @hookimpl
    def on_save_checkpoint(self) -> dict[str, Any]:
        return asdict(self.progress)

    @hookimpl
    def on_load_checkpoint(self, saved: dict[str, Any]) -> None:
        self.progress = _Progress(**saved)
