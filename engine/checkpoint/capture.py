"""Capture what a checkpoint holds: tensors moved to the CPU and the state.json metadata."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hookloop.checkpoint.datastate import is_stateful, saved_data_state
from hookloop.checkpoint.gather import (
    distributed,
    full_model_state,
    full_optimizer_state,
    rank_rng_states,
)
from hookloop.checkpoint.layout import FORMAT_VERSION
from hookloop.checkpoint.rng import rng_state
from hookloop.errors import CheckpointError

if TYPE_CHECKING:
    from hookloop.engine import Engine

__all__ = ["Snapshot", "decode", "encode", "snapshot", "tokenizer_ref"]


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
    local: bool = False,
    reuse: Snapshot | None = None,
) -> Snapshot:
    """Capture the engine's state for a checkpoint.

    Under several ranks this is collective (every rank calls it at the same point): the
    full tensors are gathered onto rank 0, whose snapshot is the one to write; the other
    ranks' snapshots hold no tensors. Every rank's RNG state is recorded.

    Args:
        engine: The engine to capture.
        extra: JSON values stored under `extra` in state.json.
        counters: Counters to record instead of `engine.state.counters()` (an emergency
            save taken mid-step records the last completed step); marks it not exact.
        copy: Clone every tensor, so training can go on while another thread writes.
        local: Capture only what this rank holds, with no collective call (for a save on
            one rank while the others may be elsewhere, e.g. after an error). Under DDP the
            rank's replica is the whole model; a sharded (FSDP) model cannot be saved so.
            Under several ranks such a snapshot is marked not exact: it lacks the other
            ranks' generator states, and they may have been mid-step.
        reuse: An earlier snapshot that nothing reads any more (its write has finished):
            with `copy`, each tensor is copied into that snapshot's tensor of the same name,
            shape and dtype instead of into new memory. Fresh memory is first touched page by
            page, so reusing it makes the copy several times cheaper; tensors on a GPU are
            copied into pinned host memory without blocking, then waited for once.
    """
    gather = distributed(engine) and not local
    if local and distributed(engine) and _sharded(engine.model):
        raise CheckpointError(
            "a sharded (FSDP) model can only be saved by every rank together, not by one rank alone"
        )
    model_sd = full_model_state(engine) if gather else engine.model.state_dict()
    to_cpu = _Copier(copy, reuse)
    model, aliases = _model_tensors(model_sd, to_cpu)
    optim_sd = full_optimizer_state(engine) if gather else engine.optimizer.state_dict()
    optimizer, opt_json = _optimizer_tensors(optim_sd, type(engine.optimizer).__name__, to_cpu)
    to_cpu.wait()
    rngs = rank_rng_states(engine) if gather else None
    state = engine.state
    meta = {
        "format_version": FORMAT_VERSION,
        "hookloop_version": _hookloop_version(),
        "torch_version": torch.__version__,
        "python_version": sys.version.split()[0],
        "git_commit": _git_commit(),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # Not exact: counters other than the live ones (mid-step), or one rank saving alone
        # under several (the other ranks' generators and positions are not in it).
        "exact": counters is None and (rngs is not None or engine.world_size == 1),
        "counters": counters or state.counters(),
        "data": {
            "accumulate": engine.accumulate,
            "resumable": hasattr(engine.train_data, "iter_epoch") or is_stateful(engine.train_data),
            "state": saved_data_state(engine.train_data),
        },
        "precision": engine.precision,
        "model": {"aliases": aliases, "class": type(engine.model).__name__},
        "optimizer": opt_json,
        "scaler": engine.scaler.state_dict() if engine.scaler is not None else None,
        "rng": rng_state(),
        "world_size": engine.world_size,
        "rng_ranks": rngs,
        "plugins": engine.plugin_states(),
        "plugin_versions": {name: p.origin for name, p in engine.plugins.items()},
        "config": engine.config,
        "metrics": _float_metrics(state),
        "tokenizer": tokenizer_ref(engine.run_dir),
        "extra": extra or {},
    }
    return Snapshot(model=model, optimizer=optimizer, state=meta)


def _sharded(model: torch.nn.Module) -> bool:
    from hookloop.distributed import is_sharded

    return is_sharded(model)


class _Copier:
    """Moves tensors to the CPU for a snapshot: as they are, or copied (into reused buffers)."""

    def __init__(self, copy: bool, reuse: Snapshot | None) -> None:
        self.copy = copy
        self.buffers: dict[tuple[str, str], torch.Tensor] = {}
        if reuse is not None and copy:
            self.buffers = {("model", k): v for k, v in reuse.model.items()}
            self.buffers.update({("optimizer", k): v for k, v in reuse.optimizer.items()})
        self.pending = False  # a non-blocking copy from a GPU is in flight

    def __call__(self, where: str, name: str, t: torch.Tensor, copy: bool = False) -> torch.Tensor:
        if not (self.copy or copy):
            t = t.to("cpu")
            return t if t.is_contiguous() else t.contiguous()
        out = self.buffers.get((where, name))
        if out is None or out.shape != t.shape or out.dtype != t.dtype:
            pinned = t.is_cuda and torch.cuda.is_available()
            out = torch.empty(t.shape, dtype=t.dtype, pin_memory=pinned)
        non_blocking = t.device.type != "cpu" and out.is_pinned()
        out.copy_(t, non_blocking=non_blocking)
        self.pending |= non_blocking
        return out

    def wait(self) -> None:
        """Return once every copy has landed (non-blocking GPU copies included)."""
        if self.pending:
            torch.cuda.synchronize()


def _model_tensors(
    model_sd: dict[str, torch.Tensor], to_cpu: _Copier
) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, t in model_sd.items():
        t = t.detach()
        key = (
            t.untyped_storage().data_ptr(),
            t.storage_offset(),
            tuple(t.shape),
            t.stride(),
            t.dtype,
        )
        if key in seen:  # the same tensor under a second name: store once, record the alias
            aliases[name] = seen[key]
            continue
        seen[key] = name
        ptr = t.untyped_storage().data_ptr()
        # A view into another stored tensor's storage is written as its own copy.
        shared = ptr in storages and t.numel() > 0
        storages.add(ptr)
        tensors[name] = to_cpu("model", name, t, shared)
    return tensors, aliases


def _optimizer_tensors(sd: dict[str, Any], class_name: str, to_cpu: _Copier) -> tuple[dict, dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in sd.get("state", {}).items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                key = f"state.{index}.{name}"
                tensors[key] = to_cpu("optimizer", key, value.detach())
            else:
                scalars.setdefault(str(index), {})[name] = encode(value)
    groups = [{k: encode(v) for k, v in g.items()} for g in sd.get("param_groups", [])]
    return tensors, {"class": class_name, "param_groups": groups, "scalars": scalars}


def encode(value: Any) -> Any:
    """A JSON form of an optimizer hyper-parameter; tuples and tensors are tagged."""
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, torch.Tensor):
        return {"__tensor__": value.tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError(f"cannot store optimizer value {value!r} of type {type(value).__name__}")


def decode(value: Any) -> Any:
    """The inverse of `encode`."""
    if isinstance(value, dict) and "__tuple__" in value:
        return tuple(decode(v) for v in value["__tuple__"])
    if isinstance(value, dict) and "__tensor__" in value:
        return torch.tensor(value["__tensor__"], dtype=getattr(torch, value["dtype"]))
    if isinstance(value, list):
        return [decode(v) for v in value]
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


def tokenizer_ref(run_dir: Path | None) -> dict[str, str] | None:
    """The run's tokenizer file and its SHA-256, recorded so a resume can check the vocabulary."""
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
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
