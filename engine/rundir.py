"""Run directories that are never lost: made, locked, moved aside, and cleaned up only if ours.

- `check_dir_argument` refuses a path that is a regular file where a directory goes.
- `make_dirs` creates a run directory and returns exactly the folders it created, so a
  failed command removes those (if still empty) and never one the user made.
- `run_entries` lists what a run directory already holds (the lock file aside).
- `move_aside` moves every entry into `previous-<UTC time>/` inside the run directory, for
  `hookloop train --restart`: the old config, metrics and checkpoints stay on disk.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

from hookloop.errors import ConfigError
from hookloop.runlock import LOCK_FILE, release_run_dir

__all__ = [
    "PREVIOUS_PREFIX",
    "check_dir_argument",
    "make_dirs",
    "move_aside",
    "remove_created",
    "run_entries",
]

PREVIOUS_PREFIX = "previous-"
"""`move_aside` puts a run's old files in `<run>/previous-<UTC time>/`."""


def check_dir_argument(option: str, path: str | Path | None) -> None:
    """Raise a ConfigError when `path` exists and is not a directory."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise ConfigError(
            f"{option} {path} is a file, not a directory; pass a directory (it is created "
            "if missing)"
        )


def make_dirs(path: Path) -> list[Path]:
    """Create `path` and its missing parents; returns the folders created, deepest first.

    Raises:
        ConfigError: a folder cannot be created (read-only, a file in the way).
    """
    missing = []
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        missing.append(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create run directory {path}: {exc.strerror or exc}; choose a writable "
            "place with --run-dir or --runs"
        ) from None
    return missing


def remove_created(created: list[Path]) -> None:
    """Release the lock of, and remove, the folders `make_dirs` created that are empty but
    for the lock file; a folder holding anything else is kept."""
    for folder in created:
        if not folder.is_dir():
            continue
        release_run_dir(folder, remove=True)
        try:
            folder.rmdir()
        except OSError:
            return  # not empty: keep it and its parents


def run_entries(run_dir: Path) -> list[str]:
    """The names of what `run_dir` holds, without its lock file; [] when it does not exist."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)


def move_aside(run_dir: Path) -> Path:
    """Move every entry of `run_dir` (but the lock) into a new `previous-<UTC time>/`.

    Returns:
        The folder now holding them.
    """
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    aside, n = run_dir / f"{PREVIOUS_PREFIX}{stamp}", 1
    while aside.exists():
        n += 1
        aside = run_dir / f"{PREVIOUS_PREFIX}{stamp}-{n}"
    entries = [name for name in run_entries(run_dir) if not name.startswith(PREVIOUS_PREFIX)]
    aside.mkdir()
    for name in entries:
        os.replace(run_dir / name, aside / name)
    return aside
