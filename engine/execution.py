"""How a micro-batch's forward and backward run: device, precision, DDP/FSDP and compile.

`prepare_execution` turns the Engine's options into an `Execution`: the module the forward
goes through (DDP and/or `torch.compile` around the plain model, or the model sharded in
place by FSDP2), the autocast context and the fp16 grad scaler. The Engine's loop only reads these; nothing here runs per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from hookloop.distributed.strategies import always_sync
from hookloop.errors import ConfigError

__all__ = ["PRECISIONS", "Execution", "model_device", "prepare_execution"]

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
    no_sync: Callable[[bool], contextlib.AbstractContextManager[Any]]
    """`no_sync(last)`: the context of a micro-batch's forward, reducing gradients over the
    ranks only on a step's `last` one (the strategy's, chosen once; a no-op in one process)."""


def prepare_execution(
    model: torch.nn.Module,
    *,
    device: torch.device,
    precision: str,
    compile: bool,
    world_size: int,
    strategy: str = "ddp",
    reshard_after_forward: bool = True,
    optimizer: torch.optim.Optimizer | None = None,
) -> Execution:
    """Wrap `model` for the run: DDP or FSDP when several processes train (see
    `hookloop.distributed.strategies`), then `torch.compile`. Under FSDP, bf16 goes through
    FSDP's own mixed-precision policy rather than autocast.

    Raises:
        ConfigError: an unknown precision or strategy, or FSDP with fp16.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    forward_model = model
    dtype = _AUTOCAST_DTYPES.get(precision)
    no_sync = always_sync
    if world_size > 1:
        from hookloop.distributed import strategy_named

        chosen = strategy_named(strategy, reshard_after_forward=reshard_after_forward)
        forward_model = chosen.wrap(model, device, optimizer=optimizer, precision=precision)
        no_sync = chosen.no_sync(forward_model)
        if chosen.casts_itself:
            dtype = None  # FSDP's MixedPrecisionPolicy casts instead
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
        no_sync=no_sync,
    )


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's first parameter lives (the CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
