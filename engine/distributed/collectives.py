"""What the ranks of a process group do together: who am I, rank 0 decides, sums and means,
and the agreement on when to stop.

Every function here is a no-op (or a plain call) without a process group of several ranks,
so the same code runs in one process and under torchrun.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from hookloop.errors import HookloopError

if TYPE_CHECKING:
    import torch

    from hookloop.state import State

T = TypeVar("T")

__all__ = [
    "StopAgreement",
    "agree_on_stop",
    "all_reduce_sum",
    "broadcast_object",
    "global_mean",
    "is_multi",
    "on_rank0",
    "rank_and_world",
]


def rank_and_world() -> tuple[int, int]:
    """`(rank, world_size)` of this process: `(0, 1)` outside a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_multi() -> bool:
    """Whether a process group of more than one rank is initialised."""
    return rank_and_world()[1] > 1


def broadcast_object(value: T) -> T:
    """Rank 0's `value` on every rank (unchanged without a process group)."""
    import torch.distributed as dist

    if not is_multi():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_rank0(fn: Callable[[], T]) -> T:
    """Call `fn` on rank 0 only and return its result on every rank.

    An error `fn` raises on rank 0 is raised on every rank (a hookloop error as itself,
    anything else as a RuntimeError naming it), so all ranks take the same way out together
    instead of some waiting forever in the next collective.
    """
    if not is_multi():
        return fn()
    import torch.distributed as dist

    outcome: tuple[bool, Any] | None = None
    error: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            outcome = (True, fn())
        except Exception as exc:
            error = exc
            outcome = (False, exc if isinstance(exc, HookloopError) else repr(exc))
    outcome = broadcast_object(outcome)
    if error is not None:
        raise error
    ok, value = outcome
    if ok:
        return value
    if isinstance(value, BaseException):
        raise value
    raise RuntimeError(f"rank 0 failed: {value}")


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over every rank in place (a no-op without a process group); returns it."""
    import torch.distributed as dist

    if is_multi():
        dist.all_reduce(values)
    return values


def global_mean(value: torch.Tensor, weight: float) -> torch.Tensor:
    """The mean of a scalar tensor over the ranks, each rank's value weighted by `weight`
    (its tokens); every rank gets the same result."""
    import torch

    both = torch.stack([value.detach().double() * weight, value.new_tensor(weight).double()])
    all_reduce_sum(both)
    return (both[0] / both[1]).to(value.dtype)


def agree_on_stop(state: State, device: torch.device | str) -> bool:
    """Whether any rank has asked to stop; the same answer on every rank (call on every rank).

    A rank that asked nothing gets `state.should_stop = "another rank requested a stop"`
    when the answer is yes. A request made while the ranks were agreeing (a signal handler
    runs at any moment) is not in this answer; it is in the next one.
    """
    import torch
    import torch.distributed as dist

    flag = torch.tensor([state.should_stop is not None], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    agreed = bool(flag.item())
    if agreed and state.should_stop is None:
        state.should_stop = "another rank requested a stop"
    return agreed


class StopAgreement:
    """The stop decision a training loop acts on.

    In one process it is `state.should_stop`, read as it is. Under torchrun the loop reads
    only what the ranks last agreed on (`agree`, called by every rank at the same points):
    a stop requested on one rank, by a hook or by a signal handler at any moment, stops
    every rank at the same agreement point, so no rank leaves the loop while another goes
    on into the next step's collectives.
    """

    def __init__(self, world_size: int, device: torch.device | str) -> None:
        self.world_size, self.device = world_size, device
        self.agreed = False

    def agree(self, state: State) -> None:
        """Share every rank's stop request (a no-op in one process)."""
        if self.world_size > 1:
            self.agreed = agree_on_stop(state, self.device)

    def requested(self, state: State) -> bool:
        """Whether the loop stops at its next check."""
        return self.agreed if self.world_size > 1 else state.should_stop is not None
