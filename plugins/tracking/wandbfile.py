"""Read the records of a W&B run file (`run-<id>.wandb`), as the offline mode writes it.

Not a plugin: no entry point. The `wandb` plugin uses it on resume to find the last step an
offline run already holds, so no step is logged twice. The file is a `:W&B` header (7
bytes) followed by LevelDB-log blocks of 32 KiB; each block holds chunks of a 7-byte header
(CRC-32C, length, type: full, first, middle, last) and the chunk's bytes. A record is a
`wandb_internal_pb2.Record` protobuf. A run killed mid-write may end with a partial chunk;
reading stops there.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["history_rows", "history_steps", "offline_run_files", "records"]

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[Any]:
    """Every `Record` of a run file, in order (a torn last chunk ends the iteration)."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # the block's zero-filled tail
            pos += left_in_block
            continue
        _, length, kind = struct.unpack_from("<IHB", data, pos)
        chunk = data[pos + HEADER : pos + HEADER + length]
        if kind == 0 or len(chunk) < length:  # zero padding or a torn write: the end
            return
        pos += HEADER + length
        if kind in (FULL, FIRST):
            pending = chunk
        else:
            pending += chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def history_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Every history row (`run.log`) of a run file, in order: `(step, {key: value})`, W&B's
    own `_step`, `_runtime` and `_timestamp` left out."""
    rows = []
    for r in records(path):
        if r.WhichOneof("record_type") == "history":
            values = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item
            }
            rows.append(
                (r.history.step.num, {k: v for k, v in values.items() if not k.startswith("_")})
            )
    return rows


def history_steps(path: Path) -> list[int]:
    """The step of every history row (`run.log`) in a run file, in order."""
    return [step for step, _ in history_rows(path)]


def offline_run_files(wandb_dir: Path, run_id: str) -> list[Path]:
    """Every offline run file of run `run_id` under a `wandb/` directory, one per start, in
    the order they started.

    W&B names a start's folder `offline-run-<YYYYMMDD_HHMMSS>-<id>`, adding `-1`, `-2`, ...
    when a start of the same id falls in the same second as an earlier one."""
    pattern = re.compile(rf"offline-run-(\d{{8}}_\d{{6}})-{re.escape(run_id)}(?:-(\d+))?")
    found = []
    for path in Path(wandb_dir).glob(f"offline-run-*/run-{run_id}.wandb"):
        if match := pattern.fullmatch(path.parent.name):
            found.append(((match[1], int(match[2] or 0)), path))
    return [path for _, path in sorted(found)]
