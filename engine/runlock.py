"""One writer per run directory: an OS file lock held for the life of the process.

`lock_run_dir(run_dir)` takes an exclusive `fcntl.flock` on `run_dir/.lock` and keeps the
file open until the process exits. The kernel drops the lock when the process dies, however
it dies (`kill -9` included), so a lock is never left stale. A second process asking for
the same directory is refused with a `RunLockedError` naming the holder's PID, which the
holder writes into the lock file. In one process the lock is re-entrant: asking again for a
directory already held returns at once.

Under `torchrun` only rank 0 writes a run directory, so only rank 0 (the `RANK` environment
variable unset or 0) takes the lock.

`lock_file(path, timeout=...)` is the same lock on any file, waited for and given back
(`unlock_file`): the tracker process holds `<run_dir>/.<tracker>.lock` while its run is open.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from hookloop.errors import RunLockedError

__all__ = ["LOCK_FILE", "holds_lock", "lock_file", "lock_run_dir", "release_run_dir", "unlock_file"]

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
    if not _try_lock(fd):
        os.close(fd)
        raise RunLockedError(
            f"run directory {run_dir} is in use by another hookloop process "
            f"(PID {_holder(path)}); wait for it to finish or stop it, or use another directory"
        ) from None
    _write_holder(fd)
    _held[key] = fd
    return path


def lock_file(path: str | Path, *, timeout: float) -> int:
    """Take the exclusive lock of the file `path` (created if missing), waiting at most
    `timeout` seconds. Re-entrant it is not: each call opens the file again.

    Returns:
        The open descriptor; `unlock_file(fd)` (or the process ending) lets the lock go.

    Raises:
        TimeoutError: another process held the lock all that time.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + timeout
    while not _try_lock(fd):
        if time.monotonic() > deadline:
            os.close(fd)
            raise TimeoutError(
                f"{path} is still locked after {timeout:g}s by another process "
                f"(PID {_holder(Path(path))})"
            )
        time.sleep(0.05)
    _write_holder(fd)
    return fd


def unlock_file(fd: int) -> None:
    """Let go of a lock taken by `lock_file`."""
    os.close(fd)  # closing the last descriptor releases the flock


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


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock of the open file `fd` without waiting; False when another
    process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        return False
    return True


def _write_holder(fd: int) -> None:
    """Write this process's PID into the lock file it holds, for `_holder` to report."""
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"
