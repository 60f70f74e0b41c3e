"""Write one row per step to `metrics.csv` in the run directory.

    [plugins.csv]
    filename = "metrics.csv"   # relative to the run directory
    every = 1                  # a row every N steps (steps with an evaluation always get one)
    ema_beta = 0.9             # smoothing of the ema_loss column

The header starts with `step, epoch, loss, ema_loss, ppl, lr, grad_norm, tokens_per_s,
val_loss, val_ppl`, then any further metric keys, sorted, as they first appear (a new key
rewrites the file once with the wider header). Each row is flushed when written, so a crash
loses at most the row being written. An evaluation that ends after its step's row was
written (at an epoch end or the end of the run) fills in that row; it never adds a second
row for the step.

Resume: at `on_fit_start` an existing file keeps only its rows with `step <= state.step`
(a crash after the last checkpoint may have written rows beyond it), then rows are appended,
so a resumed run's file equals an uninterrupted run's. The smoothed loss is saved in the
checkpoint for the same reason.

Critical: yes. The file is the run's record (`hookloop plot` reads it). A write error
(disk full, permissions) stops the run; resuming from the last checkpoint then produces a
complete file, whereas disabling the plugin would leave a permanent hole in it.

Rows travel to the host through the loggers' shared buffer (`hookloop.plugins.stepvalues.steplog`):
a step only files its values there, and rows are copied together, in one batch, when a
logger logs (`console` every 10 steps) or 16 rows are waiting; they are written once the
copy has landed, and always before a checkpoint and at the end (also when `fit()` raises).
No step waits for the device because of this plugin; a process killed outright loses the
rows still on their way (at most 16, and never rows a checkpoint covers).

Hooks: `on_fit_start`, `after_step`, `on_eval_end`, `on_fit_end`, `on_exception`,
`on_save_checkpoint`, `on_load_checkpoint`. Cost: filing a row per step (no tensor work);
per batch of rows, one stacked copy, and the lines written with one flush.
"""

from __future__ import annotations

import os
from collections import deque
from typing import TYPE_CHECKING, Any

import structlog

from hookloop import PluginError, hookimpl
from hookloop.options import check_int, check_number
from hookloop.plugins.loggers.base import ClosesAtEnd
from hookloop.plugins.loggers.csvfile import MetricsFile
from hookloop.plugins.stepvalues.hostcopy import to_floats
from hookloop.plugins.stepvalues.steplog import MAX_UNSENT, RowReader, StepLog, StepRow

if TYPE_CHECKING:
    from hookloop import Engine, State

__all__ = ["COLUMNS", "CSVLogger"]

log = structlog.get_logger(__name__)

COLUMNS = (
    "step",
    "epoch",
    "loss",
    "ema_loss",
    "ppl",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "val_loss",
    "val_ppl",
)


class CSVLogger(ClosesAtEnd):
    """Append each step's metrics to a CSV file, resume-safe."""

    name = "csv"
    reads_metrics = True  # after the metric writers: the row holds this step's metrics
    before = ("checkpoint",)  # row k is on disk before checkpoint k, so a resume never loses it

    def __init__(
        self, *, filename: str = "metrics.csv", every: int = 1, ema_beta: float = 0.9
    ) -> None:
        if not isinstance(filename, str) or not filename or os.path.isabs(filename):
            raise PluginError(
                f"csv: option filename must be a relative file name, got {filename!r}"
            )
        check_int(self.name, "every", every, minimum=1)
        check_number(self.name, "ema_beta", ema_beta, low=0, high=1, open_high=True)
        self.filename, self.every = filename, every
        self.reader = RowReader(float(ema_beta))
        self.file: MetricsFile | None = None
        self.log: StepLog | None = None
        self._queued: deque[tuple[dict[str, Any], StepRow]] = deque()  # rows on their way
        self._pending: dict[str, float] = {}  # eval metrics for the row about to be made
        self._seen_step = -1

    @hookimpl
    def on_fit_start(self, engine: Engine, state: State) -> None:
        self.close()
        self._seen_step, self._pending = -1, {}
        if engine.run_dir is None or not engine.is_main_process:
            if engine.run_dir is None:
                log.warning(
                    "csv_off", reason="the engine has no run_dir; metrics.csv is not written"
                )
            return
        self.file = MetricsFile(
            engine.run_dir / self.filename, list(COLUMNS), keep_through=state.step
        )
        self.log = StepLog.of(engine)
        self.log.join(self.reader)

    @hookimpl
    def after_step(self, state: State) -> None:
        self._seen_step = state.step
        if self.file is None or self.log is None:
            return
        row = self.log.record(state)  # no tensor work: the row is copied with others later
        if state.step % self.every == 0 or self._pending:
            self._queue(row)
        if self.log.unsent >= MAX_UNSENT:
            self.log.send()
        self._write_landed()

    def _queue(self, row: StepRow, extra: dict[str, float] | None = None) -> None:
        fields = {"step": row.step, "epoch": row.epoch, **self._pending, **(extra or {})}
        self._pending = {}
        last = self.reader.last
        if last is not None and last[0] is row:  # already read (landed): write it now
            self._write({**last[1], **fields})
        else:
            self._queued.append((fields, row))

    def _write_landed(self, *, wait: bool = False) -> None:
        """Write the queued rows whose values have landed (with `wait`: send and wait for
        all of them first), in order, with one flush."""
        if self.log is None or self.file is None:
            return
        if wait:
            self.log.flush()
        else:
            self.log.receive()
        lines = []
        for row, values in self.reader.rows(self.log):
            while self._queued and self._queued[0][1] is row:
                fields, _ = self._queued.popleft()
                lines.append({**values, **fields})
        for line in lines:
            self._write(line, flush=line is lines[-1])

    def _write(self, row: dict[str, Any], *, flush: bool = True) -> None:
        assert self.file is not None
        self.file.write(row, flush=flush)

    @hookimpl
    def on_eval_end(self, state: State, metrics: dict[str, float]) -> None:
        if self.file is None:
            return
        values, last = to_floats(metrics), self.file.last_row
        if self._queued and self._queued[-1][0]["step"] == state.step:
            self._queued[-1][0].update(values)
        elif last is not None and last["step"] == state.step:
            self.file.write({**last, **values}, replace_last=True)  # fill in its row
        elif self._seen_step == state.step and self.log is not None:  # no row (every > 1)
            self._queue(self.log.record(state), values)
        else:  # called inside after_step before this plugin's turn: goes into the step's row
            self._pending.update(values)

    def close(self) -> None:
        """Write the row still on its way and close the file; the hooks call this at the end."""
        if self.file is not None:
            self._write_landed(wait=True)
            self.file.close()
            self.file = None

    @hookimpl
    def on_save_checkpoint(self) -> dict[str, Any]:
        self._write_landed(wait=True)  # row k is on disk before checkpoint k is complete
        return {"ema_loss": self.reader.ema}

    @hookimpl
    def on_load_checkpoint(self, saved: dict[str, Any]) -> None:
        self.reader.ema = saved.get("ema_loss")
