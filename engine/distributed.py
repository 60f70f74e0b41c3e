"""Running under `torchrun`: the process group, the rank's device and the model wrapping.

`torchrun --nproc_per_node N -m hookloop train` starts N processes and tells each its place
through environment variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`,
`MASTER_ADDR`, `MASTER_PORT`). `process_group()` turns them into an initialised
`torch.distributed` process group for the length of a command and destroys it afterwards,
also when the command fails; a process not started by torchrun runs exactly as before.

Everything here is PyTorch's own `torch.distributed`: DDP
(`torch.nn.parallel.DistributedDataParallel`) replicates the model and all-reduces the
gradients; FSDP2 (`torch.distributed.fsdp.fully_shard`) shards parameters, gradients and
optimizer state across the ranks, one unit per repeated block and one for the root.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from hookloop.errors import ConfigError, HookloopError

T = TypeVar("T")

__all__ = [
    "BACKENDS",
    "STRATEGIES",
    "Launch",
    "StopAgreement",
    "agree_on_stop",
    "all_reduce_sum",
    "announce",
    "broadcast_object",
    "global_mean",
    "is_sharded",
    "launch_from_env",
    "on_rank0",
    "process_group",
    "rank_device",
    "shard_model",
    "no_sync",
    "wrap_model",
]

BACKENDS = ("auto", "nccl", "gloo")
"""`distributed.backend` values: `auto` picks nccl on CUDA and gloo otherwise."""
STRATEGIES = ("ddp", "fsdp")
"""`distributed.strategy` values: replicate (DDP) or shard (FSDP2) the model."""
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT")
_LAUNCH_FIX = (
    "launch with torchrun (which sets them all), or unset RANK, WORLD_SIZE and LOCAL_RANK "
    "to run one process"
)


@dataclass(frozen=True, slots=True)
class Launch:
    """Where this process stands in a torchrun launch."""

    rank: int
    """Global rank, 0 .. world_size-1."""
    world_size: int
    """Processes in the job, over every node."""
    local_rank: int
    """Rank on this machine: the index of the GPU this process uses."""
    backend: str
    """The process group's backend: `nccl` or `gloo`."""
    strategy: str
    """`ddp` or `fsdp`."""


def launch_from_env(environ: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """`(rank, world_size, local_rank)` when torchrun started this process, else None.

    None only when none of `RANK`, `WORLD_SIZE` and `LOCAL_RANK` is set. Once any is, every
    variable a launch reads is checked here, before anything is written or any connection
    tried: all three are set, each a whole number, `0 <= RANK < WORLD_SIZE`,
    `0 <= LOCAL_RANK`, and `LOCAL_RANK < LOCAL_WORLD_SIZE <= WORLD_SIZE` when
    `LOCAL_WORLD_SIZE` is set; the rendezvous address `MASTER_ADDR` is not empty and
    `MASTER_PORT` a port number (without them `torch.distributed` raises a traceback, and a
    rank other than 0 would wait for a rank 0 that no one started).

    Raises:
        ConfigError: the variables are incomplete, not whole numbers, out of range or
            inconsistent, or the rendezvous address is missing or malformed.
    """
    env = os.environ if environ is None else environ
    present = [name for name in _ENV if name in env]
    if not present:
        return None
    missing = [name for name in _ENV if name not in env]
    if missing:
        given = ", ".join(f"{n}={env[n]!r}" for n in present)
        raise ConfigError(
            f"torchrun variables incomplete: {given} set but {' and '.join(missing)} not; "
            + _LAUNCH_FIX
        )
    rank, world, local = (_whole_number(env, name) for name in _ENV)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(
            f"torchrun variables out of range: RANK={rank}, WORLD_SIZE={world}, "
            f"LOCAL_RANK={local} (need WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE and "
            f"LOCAL_RANK >= 0); {_LAUNCH_FIX}"
        )
    if "LOCAL_WORLD_SIZE" in env:
        local_world = _whole_number(env, "LOCAL_WORLD_SIZE")
        if not local < local_world <= world:
            raise ConfigError(
                f"torchrun variables inconsistent: LOCAL_RANK={local}, LOCAL_WORLD_SIZE="
                f"{local_world}, WORLD_SIZE={world} (need LOCAL_RANK < LOCAL_WORLD_SIZE <= "
                f"WORLD_SIZE); {_LAUNCH_FIX}"
            )
    unset = [name for name in _RENDEZVOUS if not env.get(name, "").strip()]
    if unset:
        raise ConfigError(
            f"RANK={rank}, WORLD_SIZE={world} and LOCAL_RANK={local} are set but the "
            f"rendezvous address is not ({' and '.join(unset)} missing); {_LAUNCH_FIX}"
        )
    port = env["MASTER_PORT"].strip()
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ConfigError(
            f"MASTER_PORT must be a port number from 1 to 65535, got {env['MASTER_PORT']!r}; "
            + _LAUNCH_FIX
        )
    return rank, world, local


def _whole_number(env: Mapping[str, str], name: str) -> int:
    """`env[name]` as an int, or a ConfigError naming the variable and its value."""
    text = env[name].strip()
    if not (text.isascii() and text.lstrip("-").isdigit() and len(text) <= 18):
        raise ConfigError(
            f"torchrun variable {name} must be a whole number, got {env[name]!r}; " + _LAUNCH_FIX
        )
    return int(text)


def _choose_backend(backend: str, device: str) -> str:
    import torch

    if backend not in BACKENDS:
        raise ConfigError(
            f"distributed.backend must be one of {', '.join(BACKENDS)}, got {backend!r}"
        )
    if backend != "auto":
        if backend == "nccl" and not torch.cuda.is_available():
            raise ConfigError(
                "distributed.backend = 'nccl' needs CUDA GPUs and none is available; "
                "use 'gloo' (or 'auto')"
            )
        return backend
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "nccl" if cuda else "gloo"


def rank_device(device: str, launch: Launch | None) -> str:
    """The device this rank trains on: under a launch, `cuda` becomes `cuda:LOCAL_RANK`."""
    if launch is not None and device == "cuda":
        return f"cuda:{launch.local_rank}"
    return device


@contextlib.contextmanager
def process_group(
    *,
    backend: str = "auto",
    strategy: str = "ddp",
    device: str = "auto",
    timeout_s: float = 600.0,
) -> Iterator[Launch | None]:
    """Initialise `torch.distributed` from torchrun's variables for the block, then destroy it.

    Yields None (and does nothing) when this process was not started by torchrun, or the
    Launch. On CUDA with nccl the rank's GPU (`LOCAL_RANK`) becomes the current device.
    The group is destroyed when
    the block ends, also on an error: the failing rank exits, torchrun sees it and ends the
    others, so no rank waits forever (collectives also time out after `timeout_s`).

    Raises:
        ConfigError: an unknown backend or strategy, nccl without a GPU, torchrun variables
            that are incomplete or inconsistent (see `launch_from_env`), or a rendezvous
            that cannot be joined (a port in use, an address no rank can reach).
    """
    found = launch_from_env()
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"distributed.strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}"
        )
    if found is None:
        yield None
        return
    import torch
    import torch.distributed as dist

    rank, world, local = found
    chosen = _choose_backend(backend, device)
    launch = Launch(rank, world, local, chosen, strategy)
    if dist.is_initialized():  # the caller set it up: use it, leave it to the caller
        yield launch
        return
    if chosen == "nccl":
        torch.cuda.set_device(local)
    try:
        dist.init_process_group(chosen, timeout=_dt.timedelta(seconds=timeout_s))
    except (dist.DistError, ValueError) as exc:  # a rendezvous that cannot be reached or held
        where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        raise ConfigError(
            f"rank {rank} of {world} cannot join the rendezvous at {where} "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); check that the "
            "port is free and the address reachable from every machine, or launch with "
            "torchrun --standalone"
        ) from None
    ok = False
    try:
        yield launch
        ok = True
    finally:
        gc.collect()  # DDP wrappers (their reducers) go before the group they use
        if ok:
            dist.barrier()  # no rank tears the group down while another still uses it
        dist.destroy_process_group()
        if not ok:
            sys.stderr.flush()


def announce(launch: Launch | None, strategy: str | None = None) -> None:
    """Rank 0 prints the one line saying world size, backend and strategy of a launch."""
    if launch is not None and launch.rank == 0:
        print(
            f"hookloop: distributed run, world size {launch.world_size}, backend "
            f"{launch.backend}, strategy {strategy or launch.strategy}",
            flush=True,
        )


def broadcast_object(value: Any) -> Any:
    """Rank 0's `value` on every rank (unchanged without a process group)."""
    import torch.distributed as dist

    if not _multi():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _multi() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def on_rank0(fn: Callable[[], T]) -> T:
    """Call `fn` on rank 0 only and return its result on every rank.

    An error `fn` raises on rank 0 is raised on every rank (a hookloop error as itself,
    anything else as a RuntimeError naming it), so all ranks take the same way out together
    instead of some waiting forever in the next collective.
    """
    if not _multi():
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


def global_mean(value: Any, weight: float) -> Any:
    """The mean of a scalar tensor over the ranks, each rank's value weighted by `weight`
    (its tokens); every rank gets the same result."""
    import torch

    both = torch.stack([value.detach().double() * weight, value.new_tensor(weight).double()])
    all_reduce_sum(both)
    return (both[0] / both[1]).to(value.dtype)


def no_sync(model: Any, *, last: bool) -> contextlib.AbstractContextManager[Any]:
    """The context of a micro-batch's backward: gradients are reduced over the ranks only
    on the `last` micro-batch of a step (DDP's `no_sync`, FSDP's gradient-sync switch)."""
    if last:
        return contextlib.nullcontext()
    if is_sharded(model):
        return _fsdp_no_sync(model)
    skip = getattr(model, "no_sync", None)
    return skip() if skip is not None else contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model: Any) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def agree_on_stop(state: Any, device: Any) -> bool:
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

    def __init__(self, world_size: int, device: Any) -> None:
        self.world_size, self.device = world_size, device
        self.agreed = False

    def agree(self, state: Any) -> None:
        """Share every rank's stop request (a no-op in one process)."""
        if self.world_size > 1:
            self.agreed = agree_on_stop(state, self.device)

    def requested(self, state: Any) -> bool:
        """Whether the loop stops at its next check."""
        return self.agreed if self.world_size > 1 else state.should_stop is not None


def all_reduce_sum(values: Any) -> Any:
    """Sum a tensor over every rank in place (a no-op without a process group); returns it."""
    import torch.distributed as dist

    if _multi():
        dist.all_reduce(values)
    return values


def is_sharded(model: Any) -> bool:
    """Whether `model` was sharded with `fully_shard` (FSDP2)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without distributed support
        return False
    return isinstance(model, FSDPModule)


def shard_model(
    model: Any,
    optimizer: Any = None,
    *,
    reshard_after_forward: bool = True,
    bf16: bool = False,
) -> Any:
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


def wrap_model(
    model: Any,
    device: Any,
    *,
    optimizer: Any = None,
    strategy: str,
    precision: str,
    reshard_after_forward: bool,
) -> Any:
    """The module the forward goes through under a process group of several ranks.

    `ddp` wraps `model` in DistributedDataParallel (the model itself stays plain); `fsdp`
    shards `model` in place (and points `optimizer` at the sharded parameters) and returns
    it.

    Raises:
        ConfigError: an unknown strategy, or `fsdp` with fp16 (use bf16).
    """
    if strategy == "fsdp":
        if precision == "fp16":
            raise ConfigError(
                "distributed.strategy = 'fsdp' does not take training.precision = 'fp16' "
                "(its loss scaler is not shard-aware); use 'bf16' or 'fp32'"
            )
        return shard_model(
            model,
            optimizer,
            reshard_after_forward=reshard_after_forward,
            bf16=precision == "bf16",
        )
    if strategy != "ddp":
        raise ConfigError(
            f"distributed.strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}"
        )
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
