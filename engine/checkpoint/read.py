"""Read a checkpoint: verify every file against its checksum, then restore an engine.

Nothing is unpickled: state.json is JSON and the tensors are safetensors.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import torch

from hookloop.checkpoint.atomic import read_pointer
from hookloop.checkpoint.capture import decode, tokenizer_ref
from hookloop.checkpoint.checksum import checksums
from hookloop.checkpoint.datastate import restore_data
from hookloop.checkpoint.gather import load_model_state, load_optimizer_state
from hookloop.checkpoint.layout import (
    CHECKPOINTS_DIR,
    LATEST,
    MODEL_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    checkpoint_step,
    list_checkpoints,
)
from hookloop.checkpoint.rng import set_rng_state
from hookloop.checkpoint.schema import check_optimizer_names, check_state, recorded_checksum
from hookloop.checkpoint.tensorfile import read_tensors
from hookloop.errors import CheckpointError
from hookloop.filecheck import read_json

if TYPE_CHECKING:
    from hookloop.engine import Engine
    from hookloop.journal import Journal

__all__ = [
    "inexact_reason",
    "latest_valid_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "read_model_state",
    "verify_checkpoint",
]

log = structlog.get_logger("hookloop")
_FIX = "use an earlier checkpoint (the run's checkpoints/ holds the others)"


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check that a checkpoint is complete and its files match their checksums.

    Returns:
        The content of its state.json.

    Raises:
        CheckpointError: missing, partial, corrupt, or of an unknown format version.
    """
    state, _ = _read_verified(Path(path), deserialize=False)
    return state


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """Read and verify a checkpoint: its state.json and the tensors of each file by name."""
    return _read_verified(Path(path), deserialize=True)


def read_model_state(
    path: Path, *, allow_bare: bool = False
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and verify a checkpoint; its state.json and the model's `state_dict` tensors.

    Tied weights stored once come back under every name (`model.aliases`). This is what
    `hookloop sample`, `hookloop eval` and exporters read, verified like a resume.

    Args:
        allow_bare: also accept a directory holding only `model.safetensors` (weights from
            elsewhere, no `state.json`): its header and offsets are checked, but with no
            checksum to compare it cannot be verified, which a warning says. The state
            returned is then empty.
    """
    path = Path(path)
    if allow_bare and not (path / STATE_FILE).exists() and (path / MODEL_FILE).is_file():
        log.warning("checkpoint_unverified", path=str(path), reason=f"no {STATE_FILE}")
        data = _read_file(path, MODEL_FILE)
        return {}, read_tensors(data, name=str(path / MODEL_FILE))
    state, files = read_checkpoint(path)
    return state, _model_tensors(state, files)


def _model_tensors(state: dict[str, Any], files: dict[str, dict]) -> dict[str, torch.Tensor]:
    model = dict(files[MODEL_FILE])
    for alias, stored in state.get("model", {}).get("aliases", {}).items():
        model[alias] = model[stored]
    return model


def _read_verified(path: Path, *, deserialize: bool) -> tuple[dict, dict]:
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a directory")
    try:
        state = read_json(path / STATE_FILE, CheckpointError, fix=_FIX)
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint {path} is partial: it has no {STATE_FILE}; {_FIX}"
        ) from None
    check_state(state, path)
    files = state["files"]
    contents = {name: _read_file(path, name) for name in files}
    recorded = {name: recorded_checksum(info) for name, info in files.items()}
    for name, info in files.items():
        if "bytes" in info and len(contents[name]) != info["bytes"]:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: {name} has {len(contents[name])} bytes, "
                f"{STATE_FILE} says {info['bytes']} (truncated or replaced); {_FIX}"
            )
    digests = checksums({name: (recorded[name][0], contents[name]) for name in files})
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for name in files:
        algorithm, expected = recorded[name]
        if digests[name] != expected:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: {name} does not match its checksum "
                f"({algorithm}) in {STATE_FILE}; {_FIX}"
            )
        if deserialize:
            tensors[name] = read_tensors(contents[name], name=str(path / name))
    if deserialize:
        _check_names(state, tensors, path)
    return state, tensors


def _check_names(state: dict[str, Any], tensors: dict[str, dict], path: Path) -> None:
    stored = tensors[MODEL_FILE]
    for alias, name in state.get("model", {}).get("aliases", {}).items():
        if name not in stored:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: model alias {alias} names {name}, which "
                f"{MODEL_FILE} does not hold; {_FIX}"
            )
    check_optimizer_names(tensors.get(OPTIMIZER_FILE, {}), path)


def _read_file(path: Path, name: str) -> mmap.mmap | bytearray:
    """The file's bytes, mapped copy-on-write: the checksum pass reads them straight from the
    page cache and the tensors are views of the same pages (no copy into a Python buffer).

    Checkpoint files are replaced by renames, never rewritten in place, so the mapping stays
    valid while the tensors live (also after the file is pruned).
    """
    try:
        with open(path / name, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            try:
                return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            except (OSError, ValueError):  # empty, or a file system without mmap: read it
                data = bytearray(size)
                f.readinto(data)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} is partial: {name} is missing; {_FIX}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path / name}: {exc.strerror or exc}; {_FIX}") from None
    return data


def latest_valid_checkpoint(
    run_dir: Path,
    *,
    journal: Journal | None = None,
    exact: bool = False,
    skipped: list[tuple[Path, str]] | None = None,
) -> Path | None:
    """The newest checkpoint of a run that verifies, or None when there is none.

    The `latest` pointer is tried first (or, if a writer was killed while swapping that
    directory, its `.old-` copy), then every `step-N` directory from the highest step down.
    Each invalid one is logged and recorded in `journal` (`checkpoint_invalid`).

    Args:
        exact: Pass over checkpoints that verify but are not exact (`exact: false` in
            state.json, see `inexact_reason`): what `hookloop train --resume auto` wants.
        skipped: With `exact`, each checkpoint passed over is appended as `(path, why)`.
    """
    checkpoints = Path(run_dir) / CHECKPOINTS_DIR
    pointed = read_pointer(checkpoints, LATEST)
    candidates = [pointed] if pointed is not None else []
    if pointed is not None and not pointed.exists():  # killed mid-swap: the old copy is whole
        candidates.append(checkpoints / f".old-{pointed.name}")
    candidates += [p for p in reversed(list_checkpoints(checkpoints)) if p != pointed]
    for path in candidates:
        try:
            state = verify_checkpoint(path)
        except CheckpointError as exc:
            log.warning("checkpoint_invalid", path=str(path), reason=str(exc))
            if journal is not None:
                step = checkpoint_step(path)
                journal.record(
                    "checkpoint_invalid",
                    step=-1 if step is None else step,
                    reason=f"{exc}; trying an earlier checkpoint",
                    echo=False,  # the warning above says it
                    path=str(path),
                )
            continue
        why = inexact_reason(state) if exact else None
        if why is None:
            return path
        if skipped is not None:
            skipped.append((path, why))
    return None


def inexact_reason(state: dict[str, Any]) -> str | None:
    """Why a checkpoint (its state.json) would not resume exactly, or None when it would.

    Two kinds of save are not exact: one taken after an error between the micro-batches of
    a step (its generators have moved on), and one that rank 0 took alone after an error
    under several ranks (the other ranks' generator states are not in it).
    """
    if state.get("exact", True):
        return None
    if state.get("world_size", 1) > 1 and not state.get("rng_ranks"):
        return "saved by rank 0 alone after an error, without the other ranks' random state"
    return "saved in the middle of a step after an error"


def load_checkpoint(engine: Engine, path: Path) -> dict[str, Any]:
    """Restore model, optimizer, counters, RNG, data position and plugin states from `path`.

    Training data with `state_dict()`/`load_state_dict()` gets its saved state back (see
    `hookloop.checkpoint.datastate`).

    Everything is checked before anything is changed, so a refused checkpoint leaves the
    engine as it was.

    Returns:
        The checkpoint's state.json content.

    Raises:
        CheckpointError: the checkpoint is missing, partial or corrupt, or its model shapes,
            optimizer layout or vocabulary do not match the engine's.
    """
    path = Path(path)
    state, files = read_checkpoint(path)
    model = _model_tensors(state, files)
    _check_model(engine.model, model, path)
    _check_tokenizer(engine.run_dir, state.get("tokenizer"), path)
    optim = _optimizer_state_dict(state["optimizer"], files.get(OPTIMIZER_FILE, {}))
    _check_optimizer(engine.optimizer, optim, path)

    restore_data(engine.train_data, state.get("data", {}), state["counters"], str(path))
    load_model_state(engine, model)  # every rank: re-sharded under FSDP
    load_optimizer_state(engine, optim)
    if engine.scaler is not None and state.get("scaler"):
        engine.scaler.load_state_dict(state["scaler"])
    engine.state.load_counters(state["counters"])
    set_rng_state(_rank_rng(state, engine.rank))
    engine.load_plugin_states(state.get("plugins", {}))
    engine.journal.record(
        "checkpoint_loaded",
        step=engine.state.step,
        reason="resuming",
        path=str(path),
        exact=state.get("exact", True),
    )
    return state


def _rank_rng(state: dict[str, Any], rank: int) -> dict[str, Any]:
    """This rank's saved generator states: its own when the checkpoint has them (same or
    larger world size), else rank 0's."""
    ranks = state.get("rng_ranks") or []
    return ranks[rank] if rank < len(ranks) else state["rng"]


def _check_model(model: torch.nn.Module, saved: dict[str, torch.Tensor], path: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in saved.items()}
    problems = [f"{k} is missing" for k in expected if k not in got]
    problems += [f"{k} is not in the model" for k in got if k not in expected]
    problems += [
        f"{k} has shape {list(got[k])}, the model {list(shape)}"
        for k, shape in expected.items()
        if k in got and got[k] != shape
    ]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(
            f"checkpoint {path} does not match the configured model: {problems[0]}{more}; "
            "resume with the model settings it was trained with"
        )


def _check_tokenizer(run_dir: Path | None, saved: dict | None, path: Path) -> None:
    current = tokenizer_ref(run_dir)
    if saved and current and saved["sha256"] != current["sha256"]:
        raise CheckpointError(
            f"checkpoint {path} was trained with a different vocabulary than "
            f"{run_dir}/tokenizer.json; resume with the tokenizer it was trained with"
        )


def _optimizer_state_dict(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = tensor
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update({k: decode(v) for k, v in values.items()})
    groups = [{k: decode(v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _check_optimizer(optimizer: torch.optim.Optimizer, saved: dict, path: Path) -> None:
    mine = [len(g["params"]) for g in optimizer.param_groups]
    theirs = [len(g["params"]) for g in saved["param_groups"]]
    if mine != theirs:
        raise CheckpointError(
            f"checkpoint {path} has optimizer parameter groups of sizes {theirs}, the "
            f"configured optimizer {mine}; resume with the optimizer settings it was trained with"
        )
