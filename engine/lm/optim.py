"""AdamW with weight decay on weight matrices only.

Decay pulls weights toward zero; that suits the matrices of linear layers, but not biases,
normalisation gains (whose natural value is 1) or embeddings (rows of rare tokens would be
shrunk every step while seldom receiving a gradient). So parameters are split in two
groups: matrices (dim >= 2) that are not embeddings decay; everything else does not.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["build_adamw", "param_groups"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW parameter groups: `decay` (matrices) and `no_decay` (the rest).

    Each parameter appears once even when tied (shared by two modules). Groups carry a
    `name` key so plugins and logs can tell them apart.
    """
    embedding_params = {
        id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()
    }
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():  # parameters() already yields a tied parameter once
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in embedding_params else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_adamw(
    model: nn.Module,
    *,
    lr: float = 1e-3,
    betas: Iterable[float] = (0.9, 0.95),
    eps: float = 1e-8,
    weight_decay: float = 0.1,
    fused: bool = True,
) -> torch.optim.AdamW:
    """AdamW over `param_groups(model, weight_decay)`.

    Args:
        model: The model to optimize.
        lr: The peak learning rate (a schedule plugin scales from it).
        betas: `(beta1, beta2)`; 0.95 for beta2 is steadier than 0.999 on small batches.
        eps: Added to the denominator.
        weight_decay: Decoupled decay of the matrix group.
        fused: Torch's fused kernel (CPU, CUDA; the model's parameters must be on one of
            them): faster, and it lets a step be skipped on the device, so the guards need
            no host sync (`hookloop.update`). False: torch's default, foreach.
    """
    b1, b2 = betas
    return torch.optim.AdamW(
        param_groups(model, weight_decay),
        lr=lr,
        betas=(b1, b2),
        eps=eps,
        fused=True if fused else None,
    )
