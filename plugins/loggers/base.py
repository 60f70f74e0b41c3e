"""What the logger plugins (`console`, `csv`, `tensorboard`, `progress`, the trackers) share:
how long the run is planned to be, and closing at the end. (They run after the plugins that
write `state.metrics` by declaring `reads_metrics = True`; see `hookloop.loading`.)

Imports no torch, so `schedule` can use `planned_steps` while staying torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hookloop import hookimpl

if TYPE_CHECKING:
    from hookloop import Engine

__all__ = ["ClosesAtEnd", "planned_steps"]


def planned_steps(engine: Engine) -> int | None:
    """The step the current `fit()` ends at if nothing stops it early: `max_steps`, or
    `epochs` times the steps per epoch when the data has a length (the smaller of the two
    when both are given); None when it cannot be known."""
    by_epochs = None
    if engine.max_epochs and hasattr(engine.train_data, "__len__"):
        by_epochs = engine.max_epochs * (len(engine.train_data) // engine.accumulate)
    limits = [n for n in (engine.max_steps, by_epochs) if n]
    return min(limits) if limits else None


class ClosesAtEnd:
    """Base for plugins holding a file, writer or bar: `close()` runs when `fit()` ends,
    normally or by an exception."""

    def close(self) -> None:
        """Release what the plugin holds; must be safe to call twice."""
        raise NotImplementedError

    @hookimpl
    def on_fit_end(self) -> None:
        """Close at a normal end."""
        self.close()

    @hookimpl
    def on_exception(self) -> None:
        """Close when the loop raised, so buffered lines reach the disk."""
        self.close()
