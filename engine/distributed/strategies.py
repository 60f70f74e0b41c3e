"""How the model is shared out over the ranks: `DDP` replicates it, `FSDP` shards it.

Each strategy is an object with `wrap()` (the module the forward goes through) and
`no_sync()` (the context of a micro-batch's backward, reducing gradients only on a step's
last one), chosen once by `strategy_named`, the one place the name is checked. Everything
here is PyTorch's own: `torch.nn.parallel.DistributedDataParallel`, and FSDP2
(`torch.distributed.fsdp.fully_shard`), one unit per repeated block and one for the root.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from hookloop.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DDP",
    "FSDP",
    "STRATEGIES",
    "always_sync",
    "is_sharded",
    "no_sync",
    "shard_model",
    "strategy_named",
    "wrap_model",
]

STRATEGIES = ("ddp", "fsdp")
"""`distributed.strategy` values: replicate (DDP) or shard (FSDP2) the model."""

NoSync = Callable[[bool], contextlib.AbstractContextManager[Any]]
"""`no_sync(last)`: the context of one micro-batch's backward."""


class DDP:
    """Replicate the model on every rank and all-reduce the gradients."""

    name = "ddp"
    casts_itself = False
    """Whether the wrapped model casts to the compute dtype itself (no autocast needed)."""

    def wrap(
        self,
        model: torch.nn.Module,
        device: torch.device,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        precision: str = "fp32",
    ) -> torch.nn.Module:
        """`model` in DistributedDataParallel; the model itself stays plain."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, wrapped: torch.nn.Module) -> NoSync:
        """DDP's own `no_sync` on all but the last micro-batch of a step."""
        skip = getattr(wrapped, "no_sync", None)
        if skip is None:  # e.g. the compiled wrapper of a model that is not DDP
            return always_sync
        return lambda last: contextlib.nullcontext() if last else skip()


class FSDP:
    """Shard every parameter, gradient and optimizer state over the ranks (FSDP2)."""

    name = "fsdp"
    casts_itself = True

    def __init__(self, *, reshard_after_forward: bool = True) -> None:
        self.reshard_after_forward = reshard_after_forward

    def wrap(
        self,
        model: torch.nn.Module,
        device: torch.device,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        precision: str = "fp32",
    ) -> torch.nn.Module:
        """`model` sharded in place (and `optimizer` pointed at the sharded parameters).

        Raises:
            ConfigError: fp16, whose loss scaler is not shard-aware.
        """
        if precision == "fp16":
            raise ConfigError(
                "distributed.strategy = 'fsdp' does not take training.precision = 'fp16' "
                "(its loss scaler is not shard-aware); use 'bf16' or 'fp32'"
            )
        return shard_model(
            model,
            optimizer,
            reshard_after_forward=self.reshard_after_forward,
            bf16=precision == "bf16",
        )

    def no_sync(self, wrapped: torch.nn.Module) -> NoSync:
        """FSDP's gradient-sync switch, off for all but the last micro-batch of a step."""
        return lambda last: contextlib.nullcontext() if last else _fsdp_no_sync(wrapped)


def strategy_named(name: str, *, reshard_after_forward: bool = True) -> DDP | FSDP:
    """The strategy `distributed.strategy` names.

    Raises:
        ConfigError: not one of `STRATEGIES`.
    """
    if name == "ddp":
        return DDP()
    if name == "fsdp":
        return FSDP(reshard_after_forward=reshard_after_forward)
    raise ConfigError(f"distributed.strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")


def wrap_model(
    model: torch.nn.Module,
    device: torch.device,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    strategy: str,
    precision: str,
    reshard_after_forward: bool,
) -> torch.nn.Module:
    """The module the forward goes through under several ranks: `strategy_named(strategy)`'s
    `wrap()`.

    Raises:
        ConfigError: an unknown strategy, or `fsdp` with fp16 (use bf16).
    """
    chosen = strategy_named(strategy, reshard_after_forward=reshard_after_forward)
    return chosen.wrap(model, device, optimizer=optimizer, precision=precision)


def no_sync(model: torch.nn.Module, *, last: bool) -> contextlib.AbstractContextManager[Any]:
    """The context of a micro-batch's backward for a model wrapped either way (the loop
    itself picks its strategy's `no_sync` once instead of asking on every micro-batch)."""
    strategy = FSDP() if is_sharded(model) else DDP()
    return strategy.no_sync(model)(last)


def always_sync(last: bool) -> contextlib.AbstractContextManager[Any]:
    """The `no_sync(last)` of a model whose gradients are never reduced (one process)."""
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model: Any) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model` was sharded with `fully_shard` (FSDP2)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without distributed support
        return False
    return isinstance(model, FSDPModule)


def shard_model(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    reshard_after_forward: bool = True,
    bf16: bool = False,
) -> torch.nn.Module:
    """Shard `model` in place with FSDP2 and return it.

    `fully_shard` replaces every parameter with a sharded (DTensor) one; an `optimizer`
    built over the old parameters is pointed at the new ones, parameter by parameter name.

    Every module held in an `nn.ModuleList` (the repeated transformer blocks) becomes its
    own FSDP unit, then the root takes the rest (embeddings, final norm, head). With `bf16`,
    FSDP's `MixedPrecisionPolicy` computes in bfloat16 and reduces gradients in float32; the
    sharded parameters and the optimizer state stay float32.
    """
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16
        else MixedPrecisionPolicy()
    )
    options = {"reshard_after_forward": reshard_after_forward, "mp_policy": policy}
    before = {p: name for name, p in model.named_parameters()}
    for module in list(model.modules()):
        if isinstance(module, torch.nn.ModuleList):
            for block in module:
                fully_shard(block, **options)
    fully_shard(model, **options)
    if optimizer is not None:
        if optimizer.state:
            raise ValueError("shard the model before the optimizer takes its first step")
        after = dict(model.named_parameters())
        for group in optimizer.param_groups:
            group["params"] = [after[before[p]] for p in group["params"]]
    return model
