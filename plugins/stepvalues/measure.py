"""The values the guards (`nan_guard`, `divergence`) judge a step by, on the device and on
the host.

`step_tensors()` measures a step on the device, with no host sync: the loss, the pre-clip
global gradient norm and the per-parameter gradient norms (one fused `torch._foreach_norm`
pass, as in `clip_grad_norm_`; the norm `clip` measured when it ran first), averaged over
the ranks so every rank sees the same numbers. It writes the norm to
`state.metrics["grad_norm"]` as a tensor, and caches its result for the step, so the guards
and `clip` read the gradients once however many of them ask.

Two ways to the host: `step_scalars()` reads them now (one device-to-host copy: the fallback
when the optimizer cannot skip an update on the device, see `hookloop.update`); `LateRead`
queues the copy and reads it at the next step, when it has long landed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from hookloop.distributed import all_reduce_sum
from hookloop.plugins.stepvalues.hostcopy import HostCopy

if TYPE_CHECKING:
    from hookloop.engine import Engine
    from hookloop.state import State

__all__ = [
    "LateRead",
    "StepScalars",
    "StepTensors",
    "bad_gradient_names",
    "local_tensor",
    "names_from_norms",
    "nonfinite",
    "step_scalars",
    "step_tensors",
]


@dataclass(frozen=True, slots=True)
class StepScalars:
    """The current step's loss and pre-clip global gradient norm, as host floats."""

    loss: float
    grad_norm: float

    @property
    def finite(self) -> bool:
        """True when both the loss and every gradient are finite."""
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


@dataclass(frozen=True, slots=True)
class StepTensors:
    """A step's measurements on the device (float32, the same on every rank)."""

    values: torch.Tensor
    """`[loss, norm of each parameter's gradient...]`, or `[loss, global norm]` when the
    norm came from `clip` (`per_parameter` False)."""
    loss: torch.Tensor
    total: torch.Tensor
    """The global L2 norm of the gradients, before clipping."""
    per_parameter: bool


def step_tensors(engine: Engine, state: State) -> StepTensors:
    """The current step's loss and gradient norms on the device; no host sync.

    Call in `after_backward` (the gradients must still exist); under fp16 the gradients are
    unscaled first. Later calls in the same step return the cached result.
    """
    assert state.loss is not None, "step_tensors() is for after_backward"
    # In engine.shared: (the loss it was measured for, the tensors, the scalars once read)
    cached = engine.shared.get(StepTensors)
    if cached is not None and cached[0] is state.loss:
        return cached[1]
    loss = state.loss.detach().reshape(()).float()
    known = state.metrics.get("grad_norm")
    sharded = False
    if isinstance(known, torch.Tensor):  # clip ran first: reuse its pre-clip norm
        values = torch.stack([loss, known.detach().reshape(()).float()])
    else:
        engine.unscale_gradients()
        grads = [p.grad for p in engine.model.parameters() if p.grad is not None]
        sharded = any(_is_dtensor(g) for g in grads)
        if sharded:  # FSDP: each rank holds a shard; the squares of the shards add up
            squares = torch.stack(torch._foreach_norm([local_tensor(g) for g in grads])).square()
            values = torch.cat([loss.reshape(1), squares.float()])
        else:
            values = torch.stack([loss, *torch._foreach_norm(grads)]).float()
    if engine.world_size > 1:
        # Every rank must take the same decision: average the loss (DDP's gradients, hence
        # their norms, are already equal on every rank); FSDP's squared shards are summed.
        values = all_reduce_sum(values) / engine.world_size
        if sharded:
            values = torch.cat([values[:1], (values[1:] * engine.world_size).sqrt()])
    per_parameter = not isinstance(known, torch.Tensor)
    total = torch.linalg.vector_norm(values[1:]) if per_parameter else values[1]
    if per_parameter:
        state.metrics["grad_norm"] = total
    result = StepTensors(values=values, loss=values[0], total=total, per_parameter=per_parameter)
    engine.shared[StepTensors] = (state.loss, result, None)
    return result


def nonfinite(value: torch.Tensor) -> torch.Tensor:
    """1.0 where the scalar `value` is NaN or infinite, else 0.0 (float32, on its device)."""
    return (value * 0.0).nan_to_num(nan=1.0)  # inf * 0 and nan * 0 are nan


def step_scalars(engine: Engine, state: State) -> StepScalars:
    """The loss and gradient norm of the current step on the host, now: one host sync per
    step, shared by every caller in the step (`step_tensors()`, read back in one copy)."""
    tensors = step_tensors(engine, state)
    cached = engine.shared[StepTensors]
    if cached[2] is not None:
        return cached[2]
    host = _to_host(tensors.values)
    norm = math.sqrt(sum(v * v for v in host[1:])) if tensors.per_parameter else host[1]
    scalars = StepScalars(loss=host[0], grad_norm=norm)
    engine.shared[StepTensors] = (cached[0], tensors, scalars)
    return scalars


def _to_host(values: torch.Tensor) -> list[float]:
    """The one device-to-host copy (and so the one sync) of the fallback."""
    return values.tolist()


class LateRead:
    """One step's values on their way to the host, read at a later step without waiting.

    `put()` queues the copy (a buffered `HostCopy`: one host buffer, reused step after
    step) and returns. `take()`, a step later, finds the copy landed long ago (it waits if not) and
    reads the host buffer: a memory read, not a device sync. Under several ranks every
    rank reads at the same point.
    """

    def __init__(self) -> None:
        self._copy = HostCopy(buffered=True)
        self.note: Any = None
        """What the caller attached to the values in flight; None when none are."""

    def put(self, values: torch.Tensor, note: Any) -> None:
        """Queue the copy of the 1-D float32 tensor `values`, with `note` (not None)."""
        self._copy.start(values)
        self.note = note

    def take(self) -> tuple[list[float], Any] | None:
        """The values and note of the last `put()`, once; None when nothing is in flight."""
        if self.note is None:
            return None
        note, self.note = self.note, None
        return self._copy.read(), note


def _is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded (DTensor) tensor; any other tensor as it is."""
    return t.to_local() if _is_dtensor(t) else t


def bad_gradient_names(model: torch.nn.Module, limit: int = 8) -> list[str]:
    """Names of the parameters whose gradient holds a NaN or an infinity; when every element
    is finite (the norm overflowed), the few with the largest gradients, with their size.
    For the failure path only: one sync per parameter."""
    grads = [
        (name, local_tensor(p.grad)) for name, p in model.named_parameters() if p.grad is not None
    ]
    names = [name for name, g in grads if not bool(torch.isfinite(g).all())]
    if not names and grads:
        peaks = sorted(
            ((float(g.abs().max()) if g.numel() else 0.0, name) for name, g in grads), reverse=True
        )
        return [f"{name} (max |grad| {peak:.3g})" for peak, name in peaks[:3]]
    return _limited(names, limit)


def names_from_norms(model: torch.nn.Module, norms: list[float], limit: int = 8) -> list[str]:
    """`bad_gradient_names` from the per-parameter gradient norms a step measured (read a
    step late, when the gradients are gone): the parameters whose norm is not finite, else
    the few with the largest norms."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if len(names) != len(norms):  # not the parameters that had gradients: name none
        return []
    bad = [name for name, norm in zip(names, norms, strict=True) if not math.isfinite(norm)]
    if not bad:
        peaks = sorted(zip(norms, names, strict=True), reverse=True)[:3]
        return [f"{name} (|grad| {norm:.3g})" for norm, name in peaks]
    return _limited(bad, limit)


def _limited(names: list[str], limit: int) -> list[str]:
    return names if len(names) <= limit else [*names[:limit], f"... {len(names) - limit} more"]
