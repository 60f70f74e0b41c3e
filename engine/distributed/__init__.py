"""Running under `torchrun`: PyTorch's own `torch.distributed`, by concern.

- `launch`: where this process stands (`Launch`, read from torchrun's variables without
  importing torch), the process group for the length of a command, the rank's device;
- `collectives`: what the ranks do together (`rank_and_world`, `on_rank0`, sums and
  means, the agreement on when to stop);
- `strategies`: how the model is shared out (`DDP`, `FSDP`: `wrap()` and `no_sync()`).

Every public name is importable from `hookloop.distributed` itself.
"""

from hookloop.distributed.collectives import (
    StopAgreement,
    agree_on_stop,
    all_reduce_sum,
    broadcast_object,
    global_mean,
    is_multi,
    on_rank0,
    rank_and_world,
)
from hookloop.distributed.launch import (
    BACKENDS,
    Launch,
    announce,
    choose_backend,
    launch_from_env,
    process_group,
    rank_device,
)
from hookloop.distributed.strategies import (
    DDP,
    FSDP,
    STRATEGIES,
    is_sharded,
    no_sync,
    shard_model,
    strategy_named,
    wrap_model,
)

__all__ = [
    "BACKENDS",
    "DDP",
    "FSDP",
    "STRATEGIES",
    "Launch",
    "StopAgreement",
    "agree_on_stop",
    "all_reduce_sum",
    "announce",
    "broadcast_object",
    "choose_backend",
    "global_mean",
    "is_multi",
    "is_sharded",
    "launch_from_env",
    "no_sync",
    "on_rank0",
    "process_group",
    "rank_and_world",
    "rank_device",
    "shard_model",
    "strategy_named",
    "wrap_model",
]
