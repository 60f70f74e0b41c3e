"""A full evaluation that says what it is doing: a header line, then a batch counter.

The final validation pass of `hookloop train` and `hookloop eval` can take many seconds on
a CPU; a silent terminal looks like a hang. On a terminal the counter rewrites one line;
elsewhere (logs, pipes) only the header and the result are printed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["evaluate_with_progress"]


class _Counted:
    """Iterate `batches`, showing `done/total` on standard error when it is a terminal."""

    def __init__(self, batches: Iterable[Any], total: int) -> None:
        self.batches, self.total = batches, total
        self.live = sys.stderr.isatty()

    def __iter__(self) -> Iterator[Any]:
        for done, batch in enumerate(self.batches, start=1):
            yield batch
            if self.live and (done == self.total or done % max(1, self.total // 50) == 0):
                print(f"\r  {done}/{self.total} batches", end="", file=sys.stderr, flush=True)
        if self.live:
            print(file=sys.stderr, flush=True)

    def __len__(self) -> int:
        return self.total


def evaluate_with_progress(engine: Any, *, max_batches: int | None = None) -> dict[str, float]:
    """`engine.evaluate(max_batches=...)`, announced with the number of batches it reads."""
    val = engine.val_data
    total = min(len(val), max_batches) if max_batches else len(val)
    what = "the full validation split" if total == len(val) else "the validation split"
    batches = f"{total} batch" if total == 1 else f"{total} batches"
    if not engine.is_main_process:  # under torchrun the other ranks evaluate silently
        return engine.evaluate(max_batches=max_batches)
    print(f"evaluating on {what} ({batches})...", flush=True)
    engine.val_data = _Counted(val, total)
    try:
        return engine.evaluate(max_batches=max_batches)
    finally:
        engine.val_data = val
