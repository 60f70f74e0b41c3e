"""Checkpoints a crash cannot corrupt: safetensors + JSON, written atomically, verified on load.

A checkpoint is a directory (`run_dir/checkpoints/step-00001000/`) holding:

- `model.safetensors`: the model's `state_dict()`. A tensor that shares its storage with an
  earlier one (tied weights registered twice) is stored once; `state.json` maps the alias to
  the stored name (`model.aliases`). `safetensors.torch.load_file` reads it directly.
- `optimizer.safetensors`: every optimizer state tensor under `state.<param_index>.<name>`
  (e.g. `state.0.exp_avg`), `param_index` being the position in `optimizer.state_dict()`.
- `state.json`: format version, versions, counters, data position, RNG states, optimizer
  hyper-parameters, plugin states, the resolved config, last metrics, tokenizer reference and
  the checksum of each tensor file (CRC-32 by default, or SHA-256; see `checksum`). It is
  written last.

Writing goes to a temporary directory beside the target; every file and the directory are
fsynced, then the directory is renamed into place and the `latest` pointer (a text file
holding the directory name) is replaced with `os.replace`. A crash at any instant leaves the
previous checkpoint and pointer as they were. Nothing is pickled and nothing is unpickled.
The full format is specified in docs/guide/checkpoints.md. The package is split by what
each part does: `layout` (names of folders, files and pointers), `capture` (tensors and
metadata of a running engine), `write` (the atomic write), `read` (verification and restore),
and the file-level pieces `atomic` (fsync, swaps, pointers), `rng` (generator states),
`checksum` (the file checksums) and `tensorfile` (safetensors written from tensor memory,
checksummed while written).
"""

from hookloop.checkpoint.atomic import read_pointer, recover_partial, write_pointer
from hookloop.checkpoint.capture import Snapshot, snapshot
from hookloop.checkpoint.checksum import ALGORITHMS as CHECKSUMS
from hookloop.checkpoint.checksum import DEFAULT as DEFAULT_CHECKSUM
from hookloop.checkpoint.layout import (
    BEST,
    CHECKPOINTS_DIR,
    FORMAT_VERSION,
    LATEST,
    MODEL_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    checkpoint_name,
    checkpoint_step,
    list_checkpoints,
)
from hookloop.checkpoint.read import (
    inexact_reason,
    latest_valid_checkpoint,
    load_checkpoint,
    read_checkpoint,
    read_model_state,
    verify_checkpoint,
)
from hookloop.checkpoint.write import save_checkpoint, write_snapshot

__all__ = [
    "BEST",
    "CHECKSUMS",
    "CHECKPOINTS_DIR",
    "DEFAULT_CHECKSUM",
    "FORMAT_VERSION",
    "LATEST",
    "MODEL_FILE",
    "OPTIMIZER_FILE",
    "STATE_FILE",
    "Snapshot",
    "checkpoint_name",
    "checkpoint_step",
    "inexact_reason",
    "latest_valid_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "read_checkpoint",
    "read_model_state",
    "read_pointer",
    "recover_partial",
    "save_checkpoint",
    "snapshot",
    "verify_checkpoint",
    "write_pointer",
    "write_snapshot",
]
