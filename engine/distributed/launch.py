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
from collections.abc import Iterator, Mapping

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
_LAUNCH_FIX = (
    "launch with torchrun (which sets them all), or unset RANK, WORLD_SIZE and LOCAL_RANK "
    "to run one process"
)


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


def launch_from_env(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The `Launch` torchrun described in the environment, or None without torchrun.

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
    present = [name for name in _PLACE if name in env]
    if not present:
        return None
    missing = [name for name in _PLACE if name not in env]
    if missing:
        given = ", ".join(f"{n}={env[n]!r}" for n in present)
        raise ConfigError(
            f"torchrun variables incomplete: {given} set but {' and '.join(missing)} not; "
            + _LAUNCH_FIX
        )
    rank, world, local = (_whole_number(env, name) for name in _PLACE)
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
    return Launch(rank, world, local)


def _whole_number(env: Mapping[str, str], name: str) -> int:
    """`env[name]` as an int, or a ConfigError naming the variable and its value."""
    text = env[name].strip()
    if not (text.isascii() and text.lstrip("-").isdigit() and len(text) <= 18):
        raise ConfigError(
            f"torchrun variable {name} must be a whole number, got {env[name]!r}; " + _LAUNCH_FIX
        )
    return int(text)


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


def rank_device(device: str, environ: Mapping[str, str] | None = None) -> str:
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
        ConfigError: an unknown backend or strategy, nccl without a GPU, torchrun variables
            that are incomplete or inconsistent (see `launch_from_env`), or a rendezvous
            that cannot be joined (a port in use, an address no rank can reach).
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
    try:
        dist.init_process_group(chosen, timeout=_dt.timedelta(seconds=timeout_s))
    except (dist.DistError, ValueError) as exc:  # a rendezvous that cannot be reached or held
        where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        raise ConfigError(
            f"rank {launch.rank} of {launch.world_size} cannot join the rendezvous at {where} "
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
