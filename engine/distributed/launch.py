"""Starting under `torchrun`: where this process stands, and its process group.

`torchrun --nproc_per_node N -m hookloop train` starts N processes and tells each its place
through environment variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, and the rendezvous
address `MASTER_ADDR`, `MASTER_PORT`). `launch_from_env()` reads them into a `Launch`
without importing torch, so a command checks them in a blink; `process_group()` turns them
into an initialised `torch.distributed` process group for the length of a command and
destroys it afterwards, also when the command fails. A process not started by torchrun
runs exactly as before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import gc
import os
import sys
from collections.abc import Iterator

from hookloop.distributed.strategies import strategy_named
from hookloop.errors import ConfigError

__all__ = [
    "BACKENDS",
    "Launch",
    "announce",
    "choose_backend",
    "launch_from_env",
    "process_group",
    "rank_device",
]

BACKENDS = ("auto", "nccl", "gloo")
"""`distributed.backend` values: `auto` picks nccl on CUDA and gloo otherwise."""
_PLACE = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT")


@dataclasses.dataclass(frozen=True, slots=True)
class Launch:
    """Where this process stands in a torchrun launch."""

    rank: int
    """Global rank, 0 .. world_size-1."""
    world_size: int
    """Processes in the job, over every node."""
    local_rank: int
    """Rank on this machine: the index of the GPU this process uses."""
    backend: str = "auto"
    """The process group's backend: `nccl` or `gloo` once the group is made."""
    strategy: str = "ddp"
    """`ddp` or `fsdp`."""


def launch_from_env(environ: dict[str, str] | None = None) -> Launch | None:
    """The `Launch` torchrun described in the environment, or None without torchrun.

    Raises:
        ConfigError: some of torchrun's variables are set and others are not (a launch
            without its rendezvous address would wait or fail deep inside torch), or they
            are not whole numbers in range.
    """
    env = os.environ if environ is None else environ
    present = [name for name in _PLACE if name in env]
    if not present:
        return None
    missing = [name for name in (*_PLACE, *_RENDEZVOUS) if not env.get(name)]
    if missing:
        given = ", ".join(f"{n}={env[n]}" for n in (*_PLACE, *_RENDEZVOUS) if env.get(n))
        raise ConfigError(
            f"the environment has torchrun's {given} but not {', '.join(missing)}; start "
            "the command with torchrun (torchrun --nproc_per_node N -m hookloop ...), which "
            f"sets them all, or unset {', '.join(present)} to run one process"
        )
    try:
        rank, world, local = (int(env[name]) for name in _PLACE)
    except ValueError:
        values = ", ".join(f"{n}={env[n]!r}" for n in _PLACE)
        raise ConfigError(f"torchrun variables are not whole numbers ({values})") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"torchrun variables out of range: RANK={rank}, WORLD_SIZE={world}")
    return Launch(rank, world, local)


def choose_backend(backend: str, device: str) -> str:
    """The process group's backend for `distributed.backend` on `training.device`.

    Raises:
        ConfigError: an unknown backend, or nccl on a machine without CUDA.
    """
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


def rank_device(device: str, environ: dict[str, str] | None = None) -> str:
    """The device this process trains on: under torchrun, a bare `cuda` becomes this
    rank's own GPU, `cuda:LOCAL_RANK`; every other name is returned as it is."""
    if device != "cuda":
        return device
    launch = launch_from_env(environ)
    return device if launch is None else f"cuda:{launch.local_rank}"


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
    The group is destroyed when the block ends, also on an error: the failing rank exits,
    torchrun sees it and ends the others, so no rank waits forever (collectives also time
    out after `timeout_s`).

    Raises:
        ConfigError: an unknown backend or strategy, nccl without a GPU, or torchrun's
            variables incomplete.
    """
    strategy_named(strategy)  # the one check of the name, before anything starts
    found = launch_from_env()
    if found is None:
        yield None
        return
    import torch
    import torch.distributed as dist

    chosen = choose_backend(backend, device)
    launch = dataclasses.replace(found, backend=chosen, strategy=strategy)
    if dist.is_initialized():  # the caller set it up: use it, leave it to the caller
        yield launch
        return
    if chosen == "nccl":
        torch.cuda.set_device(launch.local_rank)
    dist.init_process_group(chosen, timeout=_dt.timedelta(seconds=timeout_s))
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
