"""Full, unsharded state across ranks, through `torch.distributed.checkpoint.state_dict`.

Under several ranks a checkpoint still holds whole tensors under the model's own parameter
names, whatever the strategy: `get_model_state_dict` / `get_optimizer_state_dict` with
`full_state_dict=True` gather them (FSDP shards are all-gathered; DDP replicas are already
whole) onto rank 0's CPU, which writes them. On load every rank reads the same files and
`set_model_state_dict` / `set_optimizer_state_dict` put each rank's part back (FSDP
re-shards the full tensors over however many ranks the resumed run has).

The optimizer file keeps its single-process layout, `state.<index>.<name>`, `index` being a
parameter's position over the param groups: PyTorch's distributed state dicts key the state
by parameter name, and the two are converted here.

Gathering is collective: every rank must call these functions at the same point.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from hookloop.checkpoint.rng import rng_state

if TYPE_CHECKING:
    from hookloop.engine import Engine

__all__ = [
    "distributed",
    "full_model_state",
    "full_optimizer_state",
    "load_model_state",
    "load_optimizer_state",
    "rank_rng_states",
]


def distributed(engine: Engine) -> bool:
    """Whether the engine runs in a process group of more than one rank."""
    return engine.world_size > 1


def _options(*, offload: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=offload)


def full_model_state(engine: Engine) -> dict[str, torch.Tensor]:
    """The model's full state dict: on rank 0 (gathered, on the CPU) and in one process;
    empty on the other ranks."""
    if not distributed(engine):
        return engine.model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(engine.model, options=_options(offload=True))


def _param_names(engine: Engine) -> list[list[str]]:
    """Each param group's parameter names, in the optimizer's order."""
    names = {p: n for n, p in engine.model.named_parameters()}
    return [[names[p] for p in group["params"]] for group in engine.optimizer.param_groups]


def full_optimizer_state(engine: Engine) -> dict[str, Any]:
    """The optimizer's full state dict in `optimizer.state_dict()` form (state keyed by
    parameter index); gathered on rank 0, empty on the other ranks."""
    if not distributed(engine):
        return engine.optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    full = get_optimizer_state_dict(engine.model, engine.optimizer, options=_options(offload=True))
    if not full:
        return {}
    index = {name: i for i, name in enumerate(n for group in _param_names(engine) for n in group)}
    groups = []
    for group, names in zip(full["param_groups"], _param_names(engine), strict=True):
        groups.append({**group, "params": [index[n] for n in names]})
    return {"state": {index[n]: s for n, s in full["state"].items()}, "param_groups": groups}


def load_model_state(engine: Engine, state: dict[str, torch.Tensor]) -> None:
    """Load a full model state dict on this rank (re-sharded under FSDP)."""
    if not distributed(engine):
        engine.model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(engine.model, state, options=_options(offload=False))


def load_optimizer_state(engine: Engine, state: dict[str, Any]) -> None:
    """Load an optimizer state dict of `optimizer.state_dict()` form on this rank."""
    if not distributed(engine):
        engine.optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    # As `Optimizer.load_state_dict` does, the saved hyperparameters replace the groups' own
    # first: a key that a plugin adds at fit start (the schedule's `initial_lr`) is not there
    # yet, and `set_optimizer_state_dict` refuses a key the live groups lack.
    for group, saved in zip(engine.optimizer.param_groups, state["param_groups"], strict=True):
        group.update({k: v for k, v in saved.items() if k != "params"})
    names = _param_names(engine)
    flat = [n for group in names for n in group]
    by_name = {
        "state": {flat[int(i)]: s for i, s in state["state"].items()},
        "param_groups": [
            {**group, "params": group_names}
            for group, group_names in zip(state["param_groups"], names, strict=True)
        ],
    }
    set_optimizer_state_dict(
        engine.model, engine.optimizer, by_name, options=_options(offload=False)
    )


def rank_rng_states(engine: Engine) -> list[dict[str, Any]] | None:
    """Every rank's generator states, in rank order (None in a single process)."""
    if not distributed(engine):
        return None
    import torch.distributed as dist

    states: list[Any] = [None] * engine.world_size
    dist.all_gather_object(states, rng_state())
    return states
