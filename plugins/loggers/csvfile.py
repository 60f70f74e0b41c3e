"""The metrics CSV file behind the `csv` plugin (a helper module, not a plugin).

Rows are keyed by step. The header can widen when a new metric appears (the file is then
rewritten once), the last row can be replaced in place (an evaluation filling in its
step's row), and opening a file to resume drops the rows a crashed run wrote past the
checkpoint. Every rewrite goes through a temporary file and an atomic rename.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import IO, Any

__all__ = ["MetricsFile"]


def _cell(value: Any) -> Any:
    """Floats at full precision (repr round-trips), missing values empty."""
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else value


class MetricsFile:
    """An append-only CSV of metric rows, open for the length of one `fit()`."""

    def __init__(self, path: Path, columns: list[str], *, keep_through: int) -> None:
        """Open `path`, keeping only existing rows with `step <= keep_through`.

        An existing file's header wins over `columns`, so a resumed run keeps its columns.
        """
        self.path, self.columns = path, list(columns)
        self.last_row: dict[str, Any] | None = None
        self._last_offset = 0
        rows: list[dict[str, str]] = []
        if path.exists():
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or columns)
                rows = [r for r in reader if r.get("step") and int(r["step"]) <= keep_through]
        self._file: IO[str] = self._rewrite(rows)

    def write(self, row: dict[str, Any], *, replace_last: bool = False, flush: bool = True) -> None:
        """Append `row` (or replace the last row with it) and flush it to the OS (with
        `flush` False, the next flushed write takes it along)."""
        new = sorted(k for k in row if k not in self.columns)
        if new:  # a metric first seen now: rewrite the file once with the wider header
            self.columns.extend(new)
            self._file.flush()
            with self.path.open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            if replace_last:
                rows, replace_last = rows[:-1], False
            self._file.close()
            self._file = self._rewrite(rows)
        if replace_last:
            self._file.seek(self._last_offset)
            self._file.truncate()
        self._last_offset = self._file.tell()
        self._writer.writerow([_cell(row.get(column)) for column in self.columns])
        if flush:
            self._file.flush()
        self.last_row = row

    def _rewrite(self, rows: list[dict[str, str]]) -> IO[str]:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, self.columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows[:-1])
            f.flush()
            self._last_offset = f.tell()
            writer.writerows(rows[-1:])
            f.flush()
            os.fsync(f.fileno())
        # A resumed run can still fill in the kept last row: an epoch-end evaluation of the
        # step its checkpoint was taken at runs again after the resume.
        self.last_row = {**rows[-1], "step": int(rows[-1]["step"])} if rows else None
        os.replace(tmp, self.path)
        file = self.path.open("a", newline="", encoding="utf-8")
        self._writer = csv.writer(file, lineterminator="\n")
        return file

    def close(self) -> None:
        """Close the file; safe to call twice."""
        self._file.close()
