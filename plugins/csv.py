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

Hooks: `on_fit_start`, `after_step`, `on_eval_end`, `on_fit_end`, `on_exception`,
`on_save_checkpoint`, `on_load_checkpoint`. Cost: one host sync and one flushed line per row.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import structlog

from hookloop import PluginError, hookimpl
from hookloop.plugins._metrics import METRIC_WRITERS, ClosesAtEnd, LossEMA, step_values, to_floats

if TYPE_CHECKING:
    from hookloop import Engine, State

__all__ = ["COLUMNS", "CSVLogger"]

log = structlog.get_logger(__name__)

COLUMNS = ("step", "epoch", "loss", "ema_loss", "ppl", "lr", "grad_norm", "tokens_per_s",
           "val_loss", "val_ppl")


def _cell(value: Any) -> Any:
    """Floats at full precision (repr round-trips), missing values empty."""
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else value


class CSVLogger(ClosesAtEnd):
    """Append each step's metrics to a CSV file, resume-safe."""

    name = "csv"
    after = METRIC_WRITERS  # run after them in after_step: the row holds this step's metrics
    before = ("checkpoint",)  # row k is on disk before checkpoint k, so a resume never loses it

    def __init__(self, *, filename: str = "metrics.csv", every: int = 1, ema_beta: float = 0.9) -> None:
        if not isinstance(filename, str) or not filename or os.path.isabs(filename):
            raise PluginError(f"csv: option filename must be a relative file name, got {filename!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise PluginError(f"csv: option every must be an integer >= 1, got {every!r}")
        if isinstance(ema_beta, bool) or not isinstance(ema_beta, (int, float)) or not 0 <= ema_beta < 1:
            raise PluginError(f"csv: option ema_beta must be in [0, 1), got {ema_beta!r}")
        self.filename, self.every, self.ema = filename, every, LossEMA(float(ema_beta))
        self.path: Path | None = None
        self.columns = list(COLUMNS)
        self._file: IO[str] | None = None
        self._writer: Any = None
        self._last_row: dict[str, Any] | None = None
        self._last_offset = 0
        self._seen_step = -1
        self._pending: dict[str, float] = {}

    @hookimpl
    def on_fit_start(self, engine: Engine, state: State) -> None:
        self.close()
        self._seen_step, self._pending, self._last_row = -1, {}, None
        if engine.run_dir is None or not engine.is_main_process:
            self.path = None
            if engine.run_dir is None:
                log.warning("csv_off", reason="the engine has no run_dir; metrics.csv is not written")
            return
        self.path = engine.run_dir / self.filename
        rows: list[dict[str, str]] = []
        if self.path.exists():
            with self.path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or COLUMNS)
                rows = [r for r in reader if r.get("step") and int(r["step"]) <= state.step]
        self._rewrite(rows)

    @hookimpl
    def after_step(self, engine: Engine, state: State) -> None:
        self.ema.update(state.loss)  # tensor op: no sync
        self._seen_step = state.step
        if self._file is None or (state.step % self.every and not self._pending):
            return
        row = {"step": state.step, "epoch": state.epoch, **step_values(state, self.ema)}
        row.update(self._pending)
        self._pending = {}
        self._write(row)

    @hookimpl
    def on_eval_end(self, engine: Engine, state: State, metrics: dict[str, float]) -> None:
        if self._file is None:
            return
        values = to_floats(metrics)
        if self._last_row is not None and self._last_row["step"] == state.step:
            self._write({**self._last_row, **values}, replace_last=True)  # fill in its row
        elif self._seen_step == state.step:  # its step got no row (every > 1): add one
            self._write({"step": state.step, "epoch": state.epoch,
                         **step_values(state, self.ema), **values})
        else:  # called inside after_step before this plugin's turn: goes into the step's row
            self._pending.update(values)

    def _write(self, row: dict[str, Any], *, replace_last: bool = False) -> None:
        assert self._file is not None
        new = sorted(k for k in row if k not in self.columns)
        if new:  # a metric first seen now: rewrite the file once with the wider header
            self.columns.extend(new)
            rows = self._read_rows()
            if replace_last:
                rows, replace_last = rows[:-1], False
            self._rewrite(rows)
        if replace_last:
            self._file.seek(self._last_offset)
            self._file.truncate()
        self._last_offset = self._file.tell()
        self._writer.writerow([_cell(row.get(column)) for column in self.columns])
        self._file.flush()
        self._last_row = row

    def _read_rows(self) -> list[dict[str, str]]:
        assert self.path is not None and self._file is not None
        self._file.flush()
        with self.path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        """Replace the file atomically with the header and `rows`, then reopen it to append."""
        assert self.path is not None
        self.close()
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, self.columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._file = self.path.open("a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file, lineterminator="\n")

    def close(self) -> None:
        """Close it now; the hooks call this at the end of fit()."""
        if self._file is not None:
            self._file.close()
            self._file = None


    @hookimpl
    def on_save_checkpoint(self) -> dict[str, Any]:
        return {"ema_loss": self.ema.save()}

    @hookimpl
    def on_load_checkpoint(self, engine: Engine, saved: dict[str, Any]) -> None:
        self.ema.load(saved.get("ema_loss"), engine.device)
