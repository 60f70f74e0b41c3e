"""How a micro-batch's forward and backward run: device, precision, DDP and compile.

`prepare_execution` turns the Engine's options into an `Execution`: the module the forward
goes through (DDP and/or `torch.compile` around the plain model), the autocast context and
the fp16 grad scaler. The Engine's loop only reads these; nothing here runs per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from hookloop.errors import ConfigError

__all__ = ["PRECISIONS", "Execution", "distributed_rank", "model_device", "prepare_execution"]

PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True, slots=True)
class Execution:
    """The pieces of a training step that depend on device, precision and world size."""

    train_model: torch.nn.Module
    """The module the forward goes through: the model, wrapped in DDP and/or compiled."""
    autocast: Callable[[], contextlib.AbstractContextManager[Any]]
    """A fresh autocast context per forward (a no-op context in fp32)."""
    scaler: torch.amp.GradScaler | None
    """The fp16 loss scaler; None in fp32 and bf16."""
    plain: bool
    """No autocast and no DDP: the loop may call the loss without any context manager."""


def prepare_execution(
    model: torch.nn.Module,
    *,
    device: torch.device,
    precision: str,
    compile: bool,
    world_size: int,
) -> Execution:
    """Wrap `model` for the run: DDP when several processes train, then `torch.compile`.

    Raises:
        ConfigError: an unknown precision.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    forward_model = model
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        forward_model = DistributedDataParallel(model, device_ids=ids)
    dtype = _AUTOCAST_DTYPES.get(precision)
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = (
        (lambda: torch.autocast(device.type, dtype=dtype))
        if dtype is not None
        else contextlib.nullcontext
    )
    return Execution(
        train_model=torch.compile(forward_model) if compile else forward_model,
        autocast=autocast,
        scaler=torch.amp.GradScaler(device.type) if precision == "fp16" else None,
        plain=dtype is None and world_size == 1,
    )


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's first parameter lives (the CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def distributed_rank() -> tuple[int, int]:
    """`(rank, world_size)` of an initialised process group, else `(0, 1)`."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
