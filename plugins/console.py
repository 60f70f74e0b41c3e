"""Log one line of training progress every `every` steps, plus each evaluation.

    [plugins.console]
    every = 10         # log every N optimizer steps (and always the last step)
    ema_beta = 0.9     # smoothing of the `ema_loss` field

A `train` line carries step, loss, ema_loss (smoothed), ppl, lr, grad_norm (when `clip`
runs), tokens_per_s (since the previous line), elapsed and eta; an `eval` line carries the
validation metrics. Lines go through structlog, so `hookloop --log-format json` turns them
into JSON objects and the default gives human key=value text.

Hooks: `on_fit_start`, `after_step`, `on_eval_end`, `on_fit_end`. Cost: filing the step's
values in the loggers' shared buffer (`hookloop.plugins.stepvalues.steplog`, no tensor work); on the
steps it logs, one batched copy of every row since the last line (shared with `csv` and
`tensorboard`) and the one host sync, none on the others. `ema_loss` is computed on the host
from every step's loss.
"""

from __future__ import annotations

import contextlib
import datetime
import sys
import time
from typing import TYPE_CHECKING, Any

import structlog

from hookloop import hookimpl
from hookloop.options import check_int, check_number
from hookloop.plugins.loggers.base import planned_steps
from hookloop.plugins.stepvalues.hostcopy import to_floats
from hookloop.plugins.stepvalues.steplog import RowReader, StepLog

if TYPE_CHECKING:
    from hookloop import Engine, State

__all__ = ["Console"]

log = structlog.get_logger(__name__)


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


def _bars_cleared() -> contextlib.AbstractContextManager[Any]:
    """Lift any live tqdm bar (the progress plugin's) off the terminal while a line is
    printed, so the line does not land on the end of the bar; a no-op without tqdm."""
    tqdm = sys.modules.get("tqdm")
    if tqdm is None or not getattr(tqdm.tqdm, "_instances", None):
        return contextlib.nullcontext()
    return tqdm.tqdm.external_write_mode(file=sys.stderr)


def _sig(value: float) -> float:
    return float(f"{value:.5g}")


class Console:
    """A structlog line every `every` steps with loss, lr, grad norm, speed and ETA."""

    name = "console"
    critical = False  # a broken log line must not stop training
    reads_metrics = True  # after the metric writers: see this step's metrics
    before = ("checkpoint",)  # step k's row is recorded before checkpoint k saves the average

    def __init__(self, *, every: int = 10, ema_beta: float = 0.9) -> None:
        check_int(self.name, "every", every, minimum=1)
        check_number(self.name, "ema_beta", ema_beta, low=0, high=1, open_high=True)
        self.every = every
        self.reader = RowReader(float(ema_beta))
        self.log: StepLog | None = None
        self._start = self._last = 0.0
        self._start_step = self._last_tokens = 0
        self._total: int | None = None

    @hookimpl
    def on_fit_start(self, engine: Engine, state: State) -> None:
        self._start = self._last = time.perf_counter()
        self._start_step, self._last_tokens = state.step, state.tokens_seen
        self._total = planned_steps(engine)
        if engine.is_main_process:
            self.log = StepLog.of(engine)
            self.log.join(self.reader)

    @hookimpl
    def after_step(self, engine: Engine, state: State) -> None:
        if self.log is None:
            return
        self.log.record(state)  # no tensor work
        if state.step % self.every and state.step != self._total:
            return
        self.log.flush()  # the one host sync, on logged steps only: every row since the last
        values = self.reader.latest(self.log) or {}
        now = time.perf_counter()
        fields: dict[str, Any] = {"step": state.step}
        for key in ("loss", "ema_loss", "ppl", "lr", "grad_norm"):
            if key in values:
                fields[key] = _sig(values[key])
        if now > self._last:
            fields["tokens_per_s"] = round(
                (state.tokens_seen - self._last_tokens) / (now - self._last)
            )
        fields["elapsed"] = _clock(now - self._start)
        done = state.step - self._start_step
        if self._total is not None and done > 0:
            fields["eta"] = _clock((now - self._start) / done * max(self._total - state.step, 0))
        self._last, self._last_tokens = now, state.tokens_seen
        with _bars_cleared():
            log.info("train", **fields)

    @hookimpl
    def on_save_checkpoint(self) -> dict[str, Any]:
        """The smoothed loss up to the checkpoint's step, so a resumed run's `ema_loss`
        goes on where it was (as `metrics.csv`'s does) instead of starting over."""
        if self.log is not None:
            self.log.flush()  # a save is a host sync anyway: read every row up to this step
            self.reader.latest(self.log)
        return {"ema_loss": self.reader.ema}

    @hookimpl
    def on_load_checkpoint(self, saved: dict[str, Any]) -> None:
        self.reader.ema = saved.get("ema_loss")

    @hookimpl
    def on_eval_end(self, engine: Engine, state: State, metrics: dict[str, float]) -> None:
        if engine.is_main_process:
            with _bars_cleared():
                log.info(
                    "eval", step=state.step, **{k: _sig(v) for k, v in to_floats(metrics).items()}
                )

    @hookimpl
    def on_fit_end(self, engine: Engine, state: State) -> None:
        if engine.is_main_process:
            with _bars_cleared():
                log.info(
                    "fit_end",
                    step=state.step,
                    reason=state.should_stop or "planned length reached",
                    elapsed=_clock(time.perf_counter() - self._start),
                )
