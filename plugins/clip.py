"""Clip gradients by their global norm or element by element, and record the norm.

    [plugins.clip]
    max_norm = 1.0       # clip the global L2 norm to this (mode = "norm")
    mode = "norm"        # "norm" or "value"
    max_value = 1.0      # clamp every gradient element to [-max_value, max_value] (mode = "value")

Writes two metrics each step, both as tensors so nothing waits for the device:
`grad_norm`, the global L2 norm of the gradients *before* clipping, and `clipped`, a bool
tensor telling whether clipping changed anything. Under fp16 the gradients are unscaled
first (`engine.unscale_gradients()`), so the norm and the threshold are in true units.

Under FSDP the gradients are sharded (DTensors): their norm is the true global norm, each
rank's part reduced over the ranks by DTensor, and the same on every rank.

Hooks: `on_fit_start` (collects the parameters), `after_backward`. Cost: one fused pass over
the gradients for the norm (`torch.nn.utils.get_total_norm`; none when `nan_guard`, which
runs first, has measured it this step: its `grad_norm` is reused), and one fused multiply
that rescales them by `min(1, max_norm / norm)` (always: deciding whether to would mean
reading the norm on the host); in value mode, a max-abs pass and the clamp. No host sync,
on any device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from hookloop import hookimpl
from hookloop.options import check_choice, check_number

if TYPE_CHECKING:
    from hookloop import Engine, State

__all__ = ["GradClip"]

MODES = ("norm", "value")


class GradClip:
    """Clip gradients after backward and record their pre-clip global norm."""

    name = "clip"
    writes_metrics = True  # loggers (reads_metrics) run after it within a hook

    def __init__(
        self, *, max_norm: float = 1.0, mode: str = "norm", max_value: float = 1.0
    ) -> None:
        check_choice(self.name, "mode", mode, MODES)
        check_number(self.name, "max_norm", max_norm, low=0, open_low=True)
        check_number(self.name, "max_value", max_value, low=0, open_low=True)
        self.mode, self.max_norm, self.max_value = mode, float(max_norm), float(max_value)
        self._params: list[torch.nn.Parameter] = []

    @hookimpl
    def on_fit_start(self, engine: Engine) -> None:
        self._params = [p for p in engine.model.parameters() if p.requires_grad]

    @hookimpl
    def after_backward(self, engine: Engine, state: State) -> None:
        engine.unscale_gradients()  # fp16: clip true gradients, not loss-scaled ones
        params = [p for p in self._params if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        known = state.metrics.get("grad_norm")
        if known is not None:
            # A plugin that ran earlier this step (nan_guard) already measured these very
            # gradients: reuse its norm instead of reading every gradient a second time.
            norm = torch.as_tensor(known, dtype=torch.float32, device=grads[0].device)
        else:  # one fused pass (torch._foreach_norm), before clipping, on the device
            norm = _full(torch.nn.utils.get_total_norm(grads))
        if self.mode == "norm":
            clipped = norm > self.max_norm
            # Always rescale, by min(1, max_norm / norm) (one fused multiply): deciding
            # whether to would read `clipped` on the host, a sync.
            torch.nn.utils.clip_grads_with_norm_(params, self.max_norm, norm)
        else:
            peak = _full(torch.nn.utils.get_total_norm(grads, norm_type=float("inf")))
            clipped = peak > self.max_value
            torch.nn.utils.clip_grad_value_(params, self.max_value)
        state.metrics["grad_norm"] = norm.detach()
        state.metrics["clipped"] = clipped


def _full(norm: torch.Tensor) -> torch.Tensor:
    """A norm computed over sharded (FSDP, DTensor) gradients, reduced to the global value."""
    from torch.distributed.tensor import DTensor

    return norm.full_tensor() if isinstance(norm, DTensor) else norm
