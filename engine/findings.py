"""What `hookloop doctor` checks and reports, as plain types any plugin can use.

A check is a function `check(subject) -> Finding`. Plugins contribute checks through the
`doctor_checks` hook; the LM recipe's checklist (`hookloop.lm.doctor`) runs them. These types
live in the core so that the hook specifications do not depend on the recipe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from hookloop.engine import Engine

__all__ = ["FAIL", "PASS", "WARN", "Check", "Finding", "Subject"]

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"


@dataclass(frozen=True, slots=True)
class Finding:
    """The outcome of one check: its name, PASS / WARN / FAIL, and the number behind it."""

    check: str
    status: str
    detail: str


@dataclass(slots=True)
class Subject:
    """What the doctor examines. Thresholds have defaults that suit a small LM."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor]
    vocab_size: int | None = None
    """Token ids must be below this; None reads it from the logits' last dimension."""
    engine: Engine | None = None
    """The engine of the configured run, for plugin-based checks (the lr schedule)."""
    max_steps: int | None = None
    """The planned run length, for the schedule check."""
    overfit_steps: int = 150
    overfit_fraction: float = 0.5
    """overfit_one_batch passes when the loss falls below this fraction of its start."""
    overfit_rows: int = 2
    """overfit_one_batch trains on this many sequences of the first batch."""


Check = Callable[[Subject], Finding]
"""A doctor check: a function of the subject returning one finding."""
