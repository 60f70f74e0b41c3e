"""The run journal: one JSON line per control decision, so a run can be reconstructed.

Plugins record what they decided and why (a step skipped, a rollback, a checkpoint written
or pruned, an early stop, a signal received, a plugin disabled) with
`engine.journal.record(...)`. Entries go to `journal.jsonl` in the run directory, flushed
line by line, and are kept in memory for tests and for `on_fit_end` summaries.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import structlog

__all__ = ["Journal"]

log = structlog.get_logger("hookloop")


class Journal:
    """An append-only list of decisions, mirrored to a JSON-lines file when it has a path."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.entries: list[dict[str, Any]] = []

    def record(
        self, event: str, *, step: int, reason: str = "", echo: bool = True, **fields: Any
    ) -> dict[str, Any]:
        """Append one decision and log it.

        Args:
            event: What happened, as a short snake_case name (`step_skipped`, `rollback`).
            step: The optimizer step the decision was taken at.
            reason: Why, in words a user reading the journal the next morning understands.
            echo: Also log it (False: the caller says it to the user in its own words).
            **fields: Any further JSON-compatible details.

        Returns:
            The entry as written.
        """
        entry = {"time": round(time.time(), 3), "step": step, "event": event, "reason": reason}
        entry.update(fields)
        self.entries.append(entry)
        if echo:
            log.info(event, step=step, reason=reason, **fields)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry, default=str) + "\n")
        return entry

    def read(self) -> list[dict[str, Any]]:
        """Every entry in the journal file (or in memory when there is no file)."""
        if self.path is None or not self.path.exists():
            return list(self.entries)
        with self.path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
