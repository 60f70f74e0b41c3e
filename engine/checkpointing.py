"""Checkpoints a crash cannot corrupt: safetensors + JSON, written atomically, verified on load.

A checkpoint is a directory (`run_dir/checkpoints/step-00001000/`) holding:

- `model.safetensors`: the model's `state_dict()`. A tensor that shares its storage with an
  earlier one (tied weights registered twice) is stored once; `state.json` maps the alias to
  the stored name (`model.aliases`). `safetensors.torch.load_file` reads it directly.
- `optimizer.safetensors`: every optimizer state tensor under `state.<param_index>.<name>`
  (e.g. `state.0.exp_avg`), `param_index` being the position in `optimizer.state_dict()`.
- `state.json`: format version, versions, counters, data position, RNG states, optimizer
  hyper-parameters, plugin states, the resolved config, last metrics, tokenizer reference and
  the SHA-256 of each tensor file. It is written last.

Writing goes to a temporary directory beside the target; every file and the directory are
fsynced, then the directory is renamed into place and the `latest` pointer (a text file
holding the directory name) is replaced with `os.replace`. A crash at any instant leaves the
previous checkpoint and pointer as they were. Nothing is pickled and nothing is unpickled.
The full format is specified in docs/guide/checkpoints.md. The file-level pieces live beside
this module: `hookloop.atomic` (fsync, swaps, pointers), `hookloop.rng` (generator states)
and `hookloop.tensorfile` (safetensors written from tensor memory, hashed while written).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import torch

from hookloop.atomic import (
    fsync_dir,
    injected_delay,
    read_pointer,
    recover_partial,
    replace_dir,
    write_file,
    write_pointer,
)
from hookloop.errors import CheckpointError
from hookloop.rng import rng_state, set_rng_state
from hookloop.tensorfile import read_tensors, write_tensors

if TYPE_CHECKING:
    from hookloop.engine import Engine
    from hookloop.journal import Journal

__all__ = [
    "BEST",
    "CHECKPOINTS_DIR",
    "FORMAT_VERSION",
    "LATEST",
    "Snapshot",
    "checkpoint_name",
    "latest_valid_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "read_checkpoint",
    "read_pointer",
    "recover_partial",
    "save_checkpoint",
    "snapshot",
    "verify_checkpoint",
    "write_pointer",
    "write_snapshot",
]

log = structlog.get_logger("hookloop")

FORMAT_VERSION = 1
MODEL_FILE, OPTIMIZER_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "state.json"
CHECKPOINTS_DIR = "checkpoints"
LATEST, BEST = "latest", "best"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_name(step: int) -> str:
    """The directory name of the checkpoint taken after `step` optimizer steps."""
    return f"step-{step:08d}"


@dataclass(slots=True)
class Snapshot:
    """Everything a checkpoint holds, captured between two steps and ready to write."""

    model: dict[str, torch.Tensor]
    """Model tensors on the CPU, shared storages stored once."""
    optimizer: dict[str, torch.Tensor]
    """Optimizer state tensors on the CPU, keyed `state.<param_index>.<name>`."""
    state: dict[str, Any]
    """The content of state.json, minus the file checksums added when writing."""


# --- capture -----------------------------------------------------------------------------


def snapshot(
    engine: Engine,
    *,
    extra: dict[str, Any] | None = None,
    counters: dict[str, int] | None = None,
    copy: bool = False,
) -> Snapshot:
    """Capture the engine's state for a checkpoint.

    Args:
        engine: The engine to capture.
        extra: JSON values stored under `extra` in state.json.
        counters: Counters to record instead of `engine.state.counters()` (an emergency
            save taken mid-step records the last completed step); marks it not exact.
        copy: Clone every tensor, so training can go on while another thread writes.
    """
    model, aliases = _model_tensors(engine.model, copy)
    optimizer, opt_json = _optimizer_tensors(engine.optimizer, copy)
    state = engine.state
    meta = {
        "format_version": FORMAT_VERSION,
        "hookloop_version": _hookloop_version(),
        "torch_version": torch.__version__,
        "python_version": sys.version.split()[0],
        "git_commit": _git_commit(),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "exact": counters is None,
        "counters": counters or state.counters(),
        "data": {"accumulate": engine.accumulate,
                 "resumable": hasattr(engine.train_data, "iter_epoch")},
        "precision": engine.precision,
        "model": {"aliases": aliases, "class": type(engine.model).__name__},
        "optimizer": opt_json,
        "scaler": engine.scaler.state_dict() if engine.scaler is not None else None,
        "rng": rng_state(),
        "plugins": engine.plugin_states(),
        "plugin_versions": {name: p.origin for name, p in engine.plugins.items()},
        "config": engine.config,
        "metrics": _float_metrics(state),
        "tokenizer": _tokenizer_ref(engine.run_dir),
        "extra": extra or {},
    }
    return Snapshot(model=model, optimizer=optimizer, state=meta)


def _model_tensors(model: torch.nn.Module, copy: bool) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, t in model.state_dict().items():
        t = t.detach()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if key in seen:  # the same tensor under a second name: store once, record the alias
            aliases[name] = seen[key]
            continue
        seen[key] = name
        ptr = t.untyped_storage().data_ptr()
        # A view into another stored tensor's storage is written as its own copy.
        shared = ptr in storages and t.numel() > 0
        storages.add(ptr)
        tensors[name] = _cpu(t, copy or shared)
    return tensors, aliases


def _optimizer_tensors(optimizer: torch.optim.Optimizer, copy: bool) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in sd["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = _cpu(value.detach(), copy)
            else:
                scalars.setdefault(str(index), {})[name] = _encode(value)
    groups = [{k: _encode(v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"class": type(optimizer).__name__, "param_groups": groups, "scalars": scalars}


def _cpu(t: torch.Tensor, copy: bool) -> torch.Tensor:
    t = t.to("cpu", copy=copy)
    return t if t.is_contiguous() else t.contiguous()


def _encode(value: Any) -> Any:
    """A JSON form of an optimizer hyper-parameter; tuples and tensors are tagged."""
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, torch.Tensor):
        return {"__tensor__": value.tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError(f"cannot store optimizer value {value!r} of type {type(value).__name__}")


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "__tuple__" in value:
        return tuple(_decode(v) for v in value["__tuple__"])
    if isinstance(value, dict) and "__tensor__" in value:
        return torch.tensor(value["__tensor__"], dtype=getattr(torch, value["dtype"]))
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _float_metrics(state: Any) -> dict[str, float]:
    metrics: dict[str, float] = {}
    items = list(state.metrics.items())
    if state.loss is not None:
        items.append(("loss", state.loss))
    for key, value in items:
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[key] = float(value)
    return metrics


def _tokenizer_ref(run_dir: Path | None) -> dict[str, str] | None:
    path = run_dir / "tokenizer.json" if run_dir is not None else None
    if path is None or not path.is_file():
        return None
    return {"file": "tokenizer.json", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _hookloop_version() -> str:
    from hookloop import __version__

    return __version__


@cache
def _git_commit() -> str | None:
    """The commit of the hookloop source tree, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
            text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# --- atomic writing ----------------------------------------------------------------------


def save_checkpoint(
    engine: Engine, directory: Path, *, extra: dict[str, Any] | None = None,
    update_latest: bool = True,
) -> Path:
    """Write a checkpoint of the engine into `directory`, atomically.

    Args:
        engine: The engine to save.
        directory: The checkpoint directory to create (or replace), e.g.
            `run_dir / "checkpoints" / checkpoint_name(step)`.
        extra: JSON values stored under `extra` in state.json.
        update_latest: Point `latest` in the parent directory at the new checkpoint.

    Returns:
        The checkpoint directory.

    Raises:
        CheckpointError: the checkpoint could not be written (e.g. the disk is full); the
            previous checkpoint and the `latest` pointer are left as they were.
    """
    return write_snapshot(snapshot(engine, extra=extra), directory, update_latest=update_latest)


def write_snapshot(snap: Snapshot, directory: Path, *, update_latest: bool = True) -> Path:
    """Write a captured snapshot atomically (temp dir, fsync, rename); see `save_checkpoint`."""
    directory = Path(directory)
    parent = directory.parent
    tmp = parent / f".tmp-{directory.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        recover_partial(parent)
        tmp.mkdir()
        files = {}
        for name, tensors in ((MODEL_FILE, snap.model), (OPTIMIZER_FILE, snap.optimizer)):
            sha256, size = write_tensors(tmp / name, tensors, {"format": "pt"})
            files[name] = {"sha256": sha256, "bytes": size}
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


def list_checkpoints(checkpoints: Path) -> list[Path]:
    """The `step-N` checkpoint directories in `checkpoints`, oldest step first."""
    if not checkpoints.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in checkpoints.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


# --- reading -----------------------------------------------------------------------------


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


def _read_verified(path: Path, *, deserialize: bool) -> tuple[dict, dict]:
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a directory")
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} is partial: it has no {STATE_FILE}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt: {STATE_FILE}: {exc}") from None
    version = state.get("format_version") if isinstance(state, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r}; this hookloop reads version "
            f"{FORMAT_VERSION}: use the hookloop version that wrote it"
        )
    files = state.get("files", {})
    contents = {name: _read_file(path, name) for name in files}
    with ThreadPoolExecutor(max(1, len(files))) as pool:  # hashlib releases the GIL
        digests = dict(zip(files, pool.map(lambda d: hashlib.sha256(d).hexdigest(),
                                           contents.values()), strict=True))
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for name, info in files.items():
        if digests[name] != info["sha256"]:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: {name} does not match its SHA-256 in {STATE_FILE}"
            )
        if deserialize:
            try:
                tensors[name] = read_tensors(contents[name])
            except (ValueError, KeyError) as exc:
                raise CheckpointError(f"checkpoint {path} is corrupt: {name}: {exc}") from None
    if MODEL_FILE not in state.get("files", {}):
        raise CheckpointError(f"checkpoint {path} is corrupt: {STATE_FILE} lists no {MODEL_FILE}")
    return state, tensors


def _read_file(path: Path, name: str) -> bytearray:
    try:
        with open(path / name, "rb") as f:
            data = bytearray(os.fstat(f.fileno()).st_size)
            f.readinto(data)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} is partial: {name} is missing") from None
    return data


def latest_valid_checkpoint(run_dir: Path, *, journal: Journal | None = None) -> Path | None:
    """The newest checkpoint of a run that verifies, or None when there is none.

    The `latest` pointer is tried first (or, if a writer was killed while swapping that
    directory, its `.old-` copy), then every `step-N` directory from the highest step down. Each invalid one is logged and recorded in `journal` (`checkpoint_invalid`).
    """
    checkpoints = Path(run_dir) / CHECKPOINTS_DIR
    pointed = read_pointer(checkpoints, LATEST)
    candidates = [pointed] if pointed is not None else []
    if pointed is not None and not pointed.exists():  # killed mid-swap: the old copy is whole
        candidates.append(checkpoints / f".old-{pointed.name}")
    candidates += [p for p in reversed(list_checkpoints(checkpoints)) if p != pointed]
    for path in candidates:
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as exc:
            log.warning("checkpoint_invalid", path=str(path), reason=str(exc))
            if journal is not None:
                m = _STEP_DIR.match(path.name)
                journal.record("checkpoint_invalid", step=int(m.group(1)) if m else -1,
                               reason=f"{exc}; trying an earlier checkpoint", path=str(path))
    return None


def load_checkpoint(engine: Engine, path: Path) -> dict[str, Any]:
    """Restore model, optimizer, counters, RNG, data position and plugin states from `path`.

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
    model = dict(files[MODEL_FILE])
    for alias, stored in state["model"].get("aliases", {}).items():
        model[alias] = model[stored]
    _check_model(engine.model, model, path)
    _check_tokenizer(engine.run_dir, state.get("tokenizer"), path)
    optim = _optimizer_state_dict(state["optimizer"], files.get(OPTIMIZER_FILE, {}))
    _check_optimizer(engine.optimizer, optim, path)

    engine.model.load_state_dict(model)
    engine.optimizer.load_state_dict(optim)
    if engine.scaler is not None and state.get("scaler"):
        engine.scaler.load_state_dict(state["scaler"])
    engine.state.load_counters(state["counters"])
    set_rng_state(state["rng"])
    engine.load_plugin_states(state.get("plugins", {}))
    engine.journal.record(
        "checkpoint_loaded", step=engine.state.step, reason="resuming", path=str(path),
        exact=state.get("exact", True),
    )
    return state


def _check_model(model: torch.nn.Module, saved: dict[str, torch.Tensor], path: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in saved.items()}
    problems = [f"{k} is missing" for k in expected if k not in got]
    problems += [f"{k} is not in the model" for k in got if k not in expected]
    problems += [
        f"{k} has shape {list(got[k])}, the model {list(shape)}"
        for k, shape in expected.items() if k in got and got[k] != shape
    ]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(
            f"checkpoint {path} does not match the configured model: {problems[0]}{more}; "
            "resume with the model settings it was trained with"
        )


def _check_tokenizer(run_dir: Path | None, saved: dict | None, path: Path) -> None:
    current = _tokenizer_ref(run_dir)
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
        state.setdefault(int(index), {}).update({k: _decode(v) for k, v in values.items()})
    groups = [{k: _decode(v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _check_optimizer(optimizer: torch.optim.Optimizer, saved: dict, path: Path) -> None:
    mine = [len(g["params"]) for g in optimizer.param_groups]
    theirs = [len(g["params"]) for g in saved["param_groups"]]
    if mine != theirs:
        raise CheckpointError(
            f"checkpoint {path} has optimizer parameter groups of sizes {theirs}, the "
            f"configured optimizer {mine}; resume with the optimizer settings it was trained with"
        )
