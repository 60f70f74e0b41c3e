"""Loss functions with the engine's `loss_fn(model, batch)` signature."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["next_token_loss"]


def next_token_loss(
    model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Mean next-token cross-entropy, in nats per token.

    Args:
        model: Maps token ids `(B, T)` to logits `(B, T, V)`.
        batch: `(inputs, targets)`, both `(B, T)` int64, targets shifted one to the left.

    Returns:
        A scalar: cross-entropy over the `B*T` flattened positions, averaged.
    """
    inputs, targets = batch
    logits = model(inputs)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
