"""Write a checkpoint atomically: temporary directory, fsync of every file, rename."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hookloop.checkpoint.atomic import (
    fsync_dir,
    injected_delay,
    recover_partial,
    replace_dir,
    write_file,
    write_pointer,
)
from hookloop.checkpoint.capture import Snapshot, snapshot
from hookloop.checkpoint.checksum import ALGORITHMS, DEFAULT, known
from hookloop.checkpoint.layout import LATEST, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE
from hookloop.checkpoint.tensorfile import write_tensors
from hookloop.errors import CheckpointError

if TYPE_CHECKING:
    from hookloop.engine import Engine

__all__ = ["save_checkpoint", "write_snapshot"]


def save_checkpoint(
    engine: Engine,
    directory: Path,
    *,
    extra: dict[str, Any] | None = None,
    update_latest: bool = True,
    checksum: str = DEFAULT,
) -> Path:
    """Write a checkpoint of the engine into `directory`, atomically.

    Args:
        engine: The engine to save.
        directory: The checkpoint directory to create (or replace), e.g.
            `run_dir / "checkpoints" / checkpoint_name(step)`.
        extra: JSON values stored under `extra` in state.json.
        update_latest: Point `latest` in the parent directory at the new checkpoint.
        checksum: The checksum algorithm of the tensor files, `"crc32"` (default) or
            `"sha256"` (see `hookloop.checkpoint.checksum`).

    Under several ranks every rank calls this: the tensors are gathered, rank 0 writes, and
    every rank returns once the checkpoint is on disk (or raises rank 0's error).

    Returns:
        The checkpoint directory.

    Raises:
        CheckpointError: the checkpoint could not be written (e.g. the disk is full); the
            previous checkpoint and the `latest` pointer are left as they were.
    """
    snap = snapshot(engine, extra=extra)  # collective under several ranks
    if engine.world_size == 1:
        return write_snapshot(snap, directory, update_latest=update_latest, checksum=checksum)
    from hookloop.distributed import on_rank0

    return on_rank0(
        lambda: write_snapshot(snap, directory, update_latest=update_latest, checksum=checksum)
    )


def write_snapshot(
    snap: Snapshot, directory: Path, *, update_latest: bool = True, checksum: str = DEFAULT
) -> Path:
    """Write a captured snapshot atomically (temp dir, fsync, rename); see `save_checkpoint`."""
    if checksum not in ALGORITHMS:
        raise ValueError(f"unknown checksum algorithm {checksum!r}; use one of {known()}")
    directory = Path(directory)
    parent = directory.parent
    tmp = parent / f".tmp-{directory.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        recover_partial(parent)
        tmp.mkdir()
        files = {}
        for name, tensors in ((MODEL_FILE, snap.model), (OPTIMIZER_FILE, snap.optimizer)):
            digest, size = write_tensors(tmp / name, tensors, {"format": "pt"}, checksum=checksum)
            files[name] = {"checksum": digest, "bytes": size}
            injected_delay()
        state = {**snap.state, "files": files}
        write_file(tmp / STATE_FILE, json.dumps(state, indent=1, default=str).encode())
        fsync_dir(tmp)
        replace_dir(tmp, directory)
        if update_latest:
            write_pointer(parent, LATEST, directory.name)
    except (OSError, CheckpointError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(
            f"could not write checkpoint {directory}: {exc.strerror or exc} "
            "(is the disk full?); the previous checkpoint is intact"
        ) from exc
    return directory
