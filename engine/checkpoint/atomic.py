"""Crash-safe file operations for checkpoints: fsynced writes, directory swaps, pointer files,
and the clean-up of what a killed writer left behind.

Work in progress is named with a leading dot (`.tmp-*`, `.old-*`, `.pointer-*`) so readers
never take it for a checkpoint.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import structlog

from hookloop.errors import CheckpointError

log = structlog.get_logger("hookloop")

__all__ = [
    "WRITE_DELAY_ENV",
    "fsync_dir",
    "injected_delay",
    "read_pointer",
    "recover_partial",
    "remove_dir",
    "replace_dir",
    "replace_file",
    "write_file",
    "write_pointer",
]

WRITE_DELAY_ENV = "HOOKLOOP_CHECKPOINT_WRITE_DELAY"  # fault-injection aid for tests


def write_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` and fsync it."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def replace_file(
    path: Path, data: bytes, *, unless_equal: bool = False, temp_prefix: str | None = None
) -> bool:
    """Give `path` the content `data` atomically: a reader (another rank, a later run)
    sees the old file or the new one, whole, never a part of it, whenever the writer dies.

    Written to a dot-named temporary file beside it (`<temp_prefix>-<pid>-<random>`, by
    default `.<name>.tmp-...`), fsynced, then renamed over it. With `unless_equal`, a file
    that already holds `data` is left untouched.

    Returns:
        Whether the file was written.
    """
    if unless_equal and path.is_file() and path.read_bytes() == data:
        return False
    prefix = temp_prefix or f".{path.name}.tmp"
    tmp = path.with_name(f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write_file(tmp, data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def fsync_dir(path: Path) -> None:
    """Fsync a directory, so the renames and creations inside it are durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def injected_delay() -> None:
    """Sleep `HOOKLOOP_CHECKPOINT_WRITE_DELAY` seconds, if set (for fault-injection tests)."""
    delay = os.environ.get(WRITE_DELAY_ENV)
    if delay:
        time.sleep(float(delay))


def replace_dir(tmp: Path, directory: Path) -> None:
    """Rename `tmp` to `directory`; an existing one is swapped out first and then removed."""
    parent = directory.parent
    if directory.exists():
        old = parent / f".old-{directory.name}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(directory, old)  # a crash from here to the next rename: recover_partial
        os.rename(tmp, directory)
        fsync_dir(parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, directory)
        fsync_dir(parent)


def remove_dir(path: Path, *, wait: bool = True) -> threading.Thread | None:
    """Remove a directory so that it vanishes at once: renamed to a dot-name, then deleted.

    A crash mid-delete leaves a `.prune-*` directory (removed by `recover_partial`), never a
    half-deleted checkpoint under its own name.

    Args:
        wait: Delete before returning; with False the files are deleted on a thread
            (freeing a large checkpoint's blocks takes a while) and this returns at once.

    Returns:
        The deleting thread (with `wait=False`, for the caller to join), else None.
    """
    trash = path.parent / f".prune-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return None
    if wait:
        shutil.rmtree(trash, ignore_errors=True)
        return None
    thread = threading.Thread(
        target=shutil.rmtree, args=(trash, True), name="hookloop-prune", daemon=True
    )
    thread.start()
    return thread


def recover_partial(checkpoints: Path) -> None:
    """Remove what a killed writer left behind and put back a checkpoint caught mid-swap.

    Temporary directories of this process (a background save in flight) are kept.
    """
    mine = f"-{os.getpid()}-"
    for entry in checkpoints.iterdir():
        name = entry.name
        if name.startswith((".tmp-", ".prune-")) and mine not in name:
            shutil.rmtree(entry, ignore_errors=True)
        elif name.startswith(".old-"):
            original = checkpoints / name.removeprefix(".old-")
            if original.exists():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                os.rename(entry, original)
        elif name.startswith(".pointer-") and mine not in name:
            entry.unlink(missing_ok=True)


def write_pointer(checkpoints: Path, pointer: str, target: str) -> None:
    """Atomically make the pointer file `checkpoints/<pointer>` name the directory `target`."""
    try:  # the `.pointer-` prefix: recover_partial clears what a killed writer left
        replace_file(
            checkpoints / pointer, (target + "\n").encode(), temp_prefix=f".pointer-{pointer}"
        )
    except OSError as exc:
        raise CheckpointError(
            f"could not update {checkpoints / pointer}: {exc.strerror or exc} (is the disk "
            "full?); it still names the previous checkpoint"
        ) from exc


def read_pointer(checkpoints: Path, pointer: str) -> Path | None:
    """The checkpoint directory a pointer file names, or None if there is no pointer.

    A pointer that is not one plain directory name (not UTF-8, a directory itself, a path
    with `/`, `..`) is ignored with a warning: callers then look through `step-N`
    directories instead, so a damaged pointer never sends a reader outside `checkpoints`.
    """
    path = checkpoints / pointer
    try:
        target = path.read_bytes()[:256].decode("utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("pointer_ignored", path=str(path), reason=str(exc))
        return None
    if not target or "/" in target or "\\" in target or target in (".", ".."):
        log.warning("pointer_ignored", path=str(path), reason=f"names {target[:40]!r}")
        return None
    return checkpoints / target
