"""One writer per run directory: an OS file lock held for the life of the process.

`lock_run_dir(run_dir)` takes an exclusive `fcntl.flock` on `run_dir/.lock` and keeps the
file open until the process exits. The kernel drops the lock when the process dies, however
it dies (`kill -9` included), so a lock is never left stale. A second process asking for
the same directory is refused with a `RunLockedError` naming the holder's PID, which the
holder writes into the lock file. In one process the lock is re-entrant: asking again for a
directory already held returns at once.

Under `torchrun` only rank 0 writes a run directory, so only rank 0 (the `RANK` environment
variable unset or 0) takes the lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from hookloop.errors import RunLockedError

__all__ = ["LOCK_FILE", "holds_lock", "lock_run_dir", "release_run_dir"]

LOCK_FILE = ".lock"
"""The lock file inside a run directory."""

_held: dict[Path, int] = {}  # resolved run directory -> open file descriptor of its lock


def lock_run_dir(run_dir: str | Path) -> Path | None:
    """Lock `run_dir` (which must exist) for this process, until it exits.

    Returns:
        The lock file, or None on a `torchrun` rank other than 0 (which takes no lock).

    Raises:
        RunLockedError: another live process holds the lock.
        OSError: the lock file cannot be created (e.g. a read-only directory).
    """
    if os.environ.get("RANK", "0") not in ("", "0"):
        return None
    key = Path(run_dir).resolve()
    path = key / LOCK_FILE
    if key in _held:
        return path
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise RunLockedError(
            f"run directory {run_dir} is in use by another hookloop process "
            f"(PID {_holder(path)}); wait for it to finish or stop it, or use another directory"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[key] = fd
    return path


def holds_lock(run_dir: str | Path) -> bool:
    """Whether this process holds the lock of `run_dir`."""
    return Path(run_dir).resolve() in _held


def release_run_dir(run_dir: str | Path, *, remove: bool = False) -> None:
    """Give the lock of `run_dir` back before the process ends (a no-op when not held).

    Args:
        remove: also delete the lock file (for a run directory about to be removed).
    """
    key = Path(run_dir).resolve()
    fd = _held.pop(key, None)
    if fd is None:
        return
    if remove:
        (key / LOCK_FILE).unlink(missing_ok=True)
    os.close(fd)  # closing the last descriptor releases the flock


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"
