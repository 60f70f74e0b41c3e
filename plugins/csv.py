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

On a GPU a row's values are copied to the host without waiting, and the row is written at a
later step, once the copy has landed (at the latest 16 rows later, before a checkpoint, and at
the end): no step waits for the device because of this plugin. A crash then loses the rows
still on their way.

Hooks: `on_fit_start`, `after_step`, `on_eval_end`, `on_fit_end`, `on_exception`,
`on_save_checkpoint`, `on_load_checkpoint`. Cost: one flushed line per row; on CPU a few
scalar reads, on a GPU one asynchronous copy.
"""

from __future__ import annotations

import os
from collections import deque
from typing import TYPE_CHECKING, Any

import structlog

from hookloop import PluginError, hookimpl
from hookloop.options import check_int, check_number
from hookloop.plugins._csvfile import MetricsFile
from hookloop.plugins._metrics import (
    METRIC_WRITERS,
    ClosesAtEnd,
    HostCopy,
    LossEMA,
    step_copy,
    to_floats,
    with_ppl,
)

if TYPE_CHECKING:
    from hookloop import Engine, State

__all__ = ["COLUMNS", "CSVLogger"]

log = structlog.get_logger(__name__)

MAX_QUEUED = 16  # rows waiting for their device copy before a step waits for the oldest
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
    after = METRIC_WRITERS  # run after them in after_step: the row holds this step's metrics
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
        self.filename, self.every, self.ema = filename, every, LossEMA(float(ema_beta))
        self.file: MetricsFile | None = None
        self._queued: deque[tuple[dict[str, Any], HostCopy]] = deque()  # rows on their way
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

    @hookimpl
    def after_step(self, state: State) -> None:
        self.ema.update(state.loss)  # tensor op: no sync
        self._seen_step = state.step
        if self.file is None:
            return
        if state.step % self.every == 0 or self._pending:
            self._queue(state)
        self._write_queued(wait=False)

    def _queue(self, state: State, extra: dict[str, float] | None = None) -> None:
        row = {"step": state.step, "epoch": state.epoch, **self._pending, **(extra or {})}
        self._pending = {}
        self._queued.append((row, step_copy(state, self.ema)))

    def _write_queued(self, *, wait: bool = True) -> None:
        """Write queued rows in order: all of them, or (wait=False) those that have landed,
        waiting only when more than MAX_QUEUED rows are queued."""
        while (
            self._queued
            and self.file is not None
            and (wait or len(self._queued) > MAX_QUEUED or self._queued[0][1].ready)
        ):
            row, copy = self._queued.popleft()
            self.file.write({**with_ppl(copy.result()), **row})

    @hookimpl
    def on_eval_end(self, state: State, metrics: dict[str, float]) -> None:
        if self.file is None:
            return
        values, last = to_floats(metrics), self.file.last_row
        if self._queued and self._queued[-1][0]["step"] == state.step:
            self._queued[-1][0].update(values)
        elif last is not None and last["step"] == state.step:
            self.file.write({**last, **values}, replace_last=True)  # fill in its row
        elif self._seen_step == state.step:  # its step got no row (every > 1): add one
            self._queue(state, values)
        else:  # called inside after_step before this plugin's turn: goes into the step's row
            self._pending.update(values)

    def close(self) -> None:
        """Write the row still on its way and close the file; the hooks call this at the end."""
        if self.file is not None:
            self._write_queued()
            self.file.close()
            self.file = None

    @hookimpl
    def on_save_checkpoint(self) -> dict[str, Any]:
        self._write_queued()  # row k is on disk before checkpoint k is complete
        return {"ema_loss": self.ema.save()}

    @hookimpl
    def on_load_checkpoint(self, engine: Engine, saved: dict[str, Any]) -> None:
        self.ema.load(saved.get("ema_loss"), engine.device)
