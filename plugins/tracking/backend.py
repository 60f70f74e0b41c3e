"""The calls a tracker plugin makes, as the tracker process sees them: `TrackerBackend`,
the base class of `MLflowBackend` and `WandBBackend`, and `TrackerRow`, what they log.

Not a plugin: no entry point. Imported in the tracker process, so it imports neither torch
nor hookloop's engine.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["TrackerRow", "TrackerBackend"]

TrackerRow = tuple[int, dict[str, float]]
"""One logged step: `(optimizer step, {metric: value})`."""


class TrackerBackend:
    """The tracker calls, made in the tracker process. Built there from JSON options:
    `Backend(**options)`."""

    def open(self, run_id: str | None) -> tuple[str, dict[str, int]]:
        """Start a run, or continue `run_id` when resuming.

        Returns:
            The run id, and for each metric the last step the run already holds (the key
            `"*"` applies to every metric: for trackers whose steps only go forward).
        """
        raise NotImplementedError

    def log_params(self, params: dict[str, str], tags: dict[str, str]) -> None:
        """Record the flattened config and the tags (a resumed run may hold some already)."""
        raise NotImplementedError

    def log_rows(self, rows: list[TrackerRow]) -> None:
        """Log metric rows, each at its step, in step order."""
        raise NotImplementedError

    def finish(self, status: str, artifacts: list[Path]) -> None:
        """Upload the artifacts and end the run: status is `FINISHED`, `FAILED` or `KILLED`."""
        raise NotImplementedError

    def abandon(self) -> None:
        """The training process died: write what is pending, leave the run to be resumed."""
