"""Write training and validation scalars for TensorBoard.

    [plugins.tensorboard]
    log_dir = ""     # where event files go; "" = <run_dir>/tensorboard
    every = 10       # write the training scalars every N optimizer steps

Needs the optional extra: `pip install '.[tensorboard]'` in the hookloop checkout; enabling
the plugin without it is a `PluginError` saying so. Training scalars go under `train/` (loss,
ema_loss, ppl, lr, grad_norm, tokens_per_s and every other metric of the step), evaluation
scalars under `val/`. A resumed run purges the events written after the checkpoint it resumes
from.

Hooks: `on_fit_start`, `after_step`, `on_eval_end`, `on_fit_end`, `on_exception`.
Cost: filing the step's values in the loggers' shared buffer (`hookloop.plugins.stepvalues.steplog`,
no tensor work); on logged steps one batched copy (shared with `console` and `csv`), the one
host sync, and a buffered write.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hookloop import PluginError, hookimpl
from hookloop.options import check_int
from hookloop.plugins.loggers.base import ClosesAtEnd
from hookloop.plugins.stepvalues.hostcopy import to_floats
from hookloop.plugins.stepvalues.steplog import RowReader, StepLog

if TYPE_CHECKING:
    from hookloop import Engine, State

__all__ = ["TensorBoard"]


class TensorBoard(ClosesAtEnd):
    """Scalars to a `torch.utils.tensorboard.SummaryWriter`."""

    name = "tensorboard"
    critical = False  # an optional viewer: failing must not stop training
    reads_metrics = True  # after the metric writers: see this step's metrics

    def __init__(self, *, log_dir: str = "", every: int = 10) -> None:
        if not isinstance(log_dir, str):
            raise PluginError(f"tensorboard: option log_dir must be a path, got {log_dir!r}")
        check_int(self.name, "every", every, minimum=1)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise PluginError(
                "tensorboard: the tensorboard package is not installed; "
                "run `pip install '.[tensorboard]'` in the hookloop checkout or disable the "
                "plugin (-p no:tensorboard)"
            ) from exc
        self._writer_class = SummaryWriter
        self.log_dir, self.every = log_dir, every
        self.reader = RowReader()
        self.log: StepLog | None = None
        self.writer: Any = None

    @hookimpl
    def on_fit_start(self, engine: Engine, state: State) -> None:
        self.close()
        if not engine.is_main_process:
            return
        if self.log_dir:
            directory = Path(self.log_dir)
        elif engine.run_dir is not None:
            directory = engine.run_dir / "tensorboard"
        else:
            raise PluginError(
                "tensorboard: the engine has no run_dir; set [plugins.tensorboard] log_dir"
            )
        # Resuming at step k: drop events a crashed run wrote after its last checkpoint.
        purge = state.step + 1 if state.step else None
        self.writer = self._writer_class(log_dir=str(directory), purge_step=purge)
        self.log = StepLog.of(engine)
        self.log.join(self.reader)

    @hookimpl
    def after_step(self, state: State) -> None:
        if self.writer is None or self.log is None:
            return
        self.log.record(state)  # no tensor work
        if state.step % self.every:
            return
        self.log.flush()  # the one host sync, on logged steps only
        for key, value in (self.reader.latest(self.log) or {}).items():
            self.writer.add_scalar(f"train/{key}", value, state.step)

    @hookimpl
    def on_eval_end(self, state: State, metrics: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in to_floats(metrics).items():
                self.writer.add_scalar(f"val/{key}", value, state.step)

    def close(self) -> None:
        """Close it now; the hooks call this at the end of fit()."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
