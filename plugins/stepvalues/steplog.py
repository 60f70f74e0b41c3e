"""The one metrics buffer the loggers share (`csv`, `console`, `tensorboard`, `progress`).

Every step, the first logger to call `StepLog.record()` in `after_step` files a row: the
step's loss and `state.metrics`, kept as they are (tensors stay on the device, nothing is
launched, nothing waits). Rows reach the host together, in one batched copy, when a logger
calls `send()`: on the steps it logs, or when `MAX_UNSENT` rows are waiting. Per device,
the rows' scalar tensors are stacked and copied (one `HostCopy`: on CUDA into pinned
memory, non-blocking, followed by an event). `receive()` turns copies that have landed into
floats (one `tolist()` per copy); `receive(wait=True)` waits for them, the one sync of a
logging step.

Each logger reads the rows through its own `RowReader`, in order, with its own smoothed
loss (`ema_loss`, computed on the host from every step's loss). Rows every reader has read
are dropped.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from hookloop.plugins.stepvalues.hostcopy import HostCopy, split_scalars, stacked

if TYPE_CHECKING:
    from hookloop import Engine, State

__all__ = ["MAX_UNSENT", "RowReader", "StepLog", "StepRow"]

MAX_UNSENT = 16
"""Rows waiting to be sent before a logger that writes every row (csv) sends them itself."""


class StepRow:
    """One step's values: `raw` until sent, then `values` (floats) once landed."""

    __slots__ = ("epoch", "host", "loss", "raw", "seq", "step", "values")

    def __init__(self, seq: int, state: State) -> None:
        self.seq, self.step, self.epoch, self.loss = seq, state.step, state.epoch, state.loss
        self.raw: dict[str, Any] | None = {"loss": state.loss, **state.metrics}
        self.host: dict[str, float] = {}  # filled while the row is in flight
        self.values: dict[str, float] | None = None


class RowReader:
    """A logger's place in the `StepLog`, with its own exponential moving average of the loss.

    The average starts at the first loss it reads, so it needs no bias correction.
    """

    def __init__(self, beta: float = 0.9) -> None:
        self.beta = beta
        self.ema: float | None = None
        self.pos = 0  # the seq of the next row to read
        self.last: tuple[StepRow, dict[str, float]] | None = None  # the last row read, with values

    def rows(self, log: StepLog) -> Iterator[tuple[StepRow, dict[str, float]]]:
        """The landed rows not read yet, in order, each with `ema_loss` and `ppl` added."""
        for row in log.rows:
            if row.seq < self.pos:
                continue
            if row.values is None:
                return
            self.pos = row.seq + 1
            values = dict(row.values)
            loss = values.get("loss")
            if loss is not None and math.isfinite(loss):
                self.ema = (
                    loss if self.ema is None else self.ema + (1 - self.beta) * (loss - self.ema)
                )
            if loss is not None:
                values["ppl"] = math.exp(min(loss, 700.0))
            if self.ema is not None:
                values["ema_loss"] = self.ema
            self.last = (row, values)
            yield row, values
        log.drop_read()

    def latest(self, log: StepLog) -> dict[str, float] | None:
        """Read every landed row; the values of the last one (None if none landed)."""
        for _ in self.rows(log):
            pass
        return self.last[1] if self.last is not None else None


class StepLog:
    """Rows of step values on their way to the host, shared by every logger of an engine."""

    @classmethod
    def of(cls, engine: Engine) -> StepLog:
        """The engine's log (made on first use, kept in `engine.shared`)."""
        log = engine.shared.get(cls)
        if log is None:
            log = engine.shared[cls] = cls()
        return log

    def __init__(self) -> None:
        self.rows: deque[StepRow] = deque()
        self.readers: list[RowReader] = []
        self._unsent: list[StepRow] = []
        # sent rows, with one copy per device: (the (row, key) of each value, the copy)
        self._in_flight: deque[tuple[list[StepRow], list[tuple[list[Any], HostCopy]]]] = deque()
        self._seq = 0
        self.latest: dict[str, float] | None = None
        """The values of the newest landed row, for a display that needs no order."""

    def join(self, reader: RowReader) -> None:
        """Let `reader` read the rows recorded from now on (once per reader)."""
        if not any(r is reader for r in self.readers):
            reader.pos = self._seq
            self.readers.append(reader)

    def record(self, state: State) -> StepRow:
        """File the row of the step just finished (once per step: later calls return it)."""
        if self.rows and self.rows[-1].loss is state.loss and self.rows[-1].step == state.step:
            return self.rows[-1]
        row = StepRow(self._seq, state)
        self._seq += 1
        self.rows.append(row)
        self._unsent.append(row)
        return row

    @property
    def unsent(self) -> int:
        """Rows recorded but not sent yet."""
        return len(self._unsent)

    def send(self) -> None:
        """Start copying every unsent row to the host: one stacked copy per device."""
        if not self._unsent:
            return
        rows, self._unsent = self._unsent, []
        numbers, by_device = split_scalars(
            ((row, key), value) for row in rows for key, value in (row.raw or {}).items()
        )
        for (row, key), number in numbers:
            row.host[key] = number
        for row in rows:
            row.raw = None
        copies = []
        for tensors in by_device.values():
            copy = HostCopy()
            copy.start(stacked(tensors))
            copies.append(([key for key, _ in tensors], copy))
        self._in_flight.append((rows, copies))
        self.receive()  # rows with nothing on a device land at once

    def receive(self, *, wait: bool = False) -> None:
        """Turn the copies that have landed (with `wait`: all of them) into row values."""
        while self._in_flight:
            rows, copies = self._in_flight[0]
            if not wait and not all(copy.landed for _, copy in copies):
                break
            self._in_flight.popleft()
            for keys, copy in copies:
                for (row, key), value in zip(keys, copy.read(), strict=True):
                    row.host[key] = value
            for row in rows:
                row.values, row.host = row.host, {}
            self.latest = rows[-1].values
        self.drop_read()

    def flush(self) -> None:
        """Send every row and wait until all have landed (a sync)."""
        self.send()
        self.receive(wait=True)

    def drop_read(self) -> None:
        """Drop the landed rows every reader has read."""
        done = min((r.pos for r in self.readers), default=self._seq)
        while self.rows and self.rows[0].seq < done and self.rows[0].values is not None:
            self.rows.popleft()
