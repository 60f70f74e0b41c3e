"""Names of the checkpoint format: the run's `checkpoints/` folder, its files and pointers."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "BEST",
    "CHECKPOINTS_DIR",
    "FORMAT_VERSION",
    "LATEST",
    "MODEL_FILE",
    "OPTIMIZER_FILE",
    "STATE_FILE",
    "checkpoint_name",
    "checkpoint_step",
    "list_checkpoints",
]

FORMAT_VERSION = 1
MODEL_FILE, OPTIMIZER_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "state.json"
CHECKPOINTS_DIR = "checkpoints"
"""The folder of a run directory that holds its checkpoints."""
LATEST, BEST = "latest", "best"
"""Pointer files in `CHECKPOINTS_DIR`, each holding one checkpoint's directory name."""
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_name(step: int) -> str:
    """The directory name of the checkpoint taken after `step` optimizer steps."""
    return f"step-{step:08d}"


def checkpoint_step(path: Path) -> int | None:
    """The step in a `step-N` checkpoint directory's name; None for any other name."""
    m = _STEP_DIR.match(Path(path).name)
    return int(m.group(1)) if m else None


def list_checkpoints(checkpoints: Path) -> list[Path]:
    """The `step-N` checkpoint directories in `checkpoints`, oldest step first."""
    if not checkpoints.is_dir():
        return []
    found = [(step, p) for p in checkpoints.iterdir() if (step := checkpoint_step(p)) is not None]
    return [p for _, p in sorted(found)]
