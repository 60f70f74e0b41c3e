"""Skipping an optimizer update on the device, so that the host never waits to decide it.

Torch's fused Adam and AdamW (`fused=True`) take a `found_inf` tensor, the mechanism
`torch.amp.GradScaler` uses: when it holds 1 the kernel leaves the weights, both moments and
the step count as they were, and the decision is made on the device. In torch 2.13 the
foreach and for-loop implementations refuse `found_inf` (they assert it is None), other
optimizers ignore it, and fused SGD with momentum would leave its momentum buffers
uninitialised if its very first update were skipped. For all of those, a plugin that must
keep an update out of the weights reads its flag on the host and sets `state.skip_step`.
"""

from __future__ import annotations

import torch

__all__ = ["can_skip_on_device", "either", "step_unless"]


def can_skip_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer.step()` can skip its update on the device (fused Adam or AdamW)."""
    return isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) and bool(
        getattr(optimizer, "_step_supports_amp_scaling", False)
    )


def either(flag: torch.Tensor | None, more: torch.Tensor) -> torch.Tensor:
    """`flag` or `more`, as the float 0/1 tensor the fused kernels read (no host sync)."""
    more = more.detach().reshape(()).to(torch.float32)
    return more if flag is None else torch.maximum(flag, more)


def step_unless(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor | None) -> None:
    """`optimizer.step()`, skipped on the device where `found_inf` (if given) is nonzero."""
    if found_inf is None:
        optimizer.step()
        return
    optimizer.grad_scale, optimizer.found_inf = None, found_inf  # type: ignore[attr-defined]
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale, optimizer.found_inf  # type: ignore[attr-defined]
