"""Two CPU processes under torch.distributed (gloo): DDP wrapping and agreed stops."""

from __future__ import annotations

import pytest

BODY = """
class StopOnRankOne:
    \"\"\"Only rank 1 asks to stop, at step 2: every rank must stop there.\"\"\"

    name = "stop_on_rank_one"

    @hookimpl
    def after_step(self, engine, state):
        if engine.rank == 1 and state.step == 2:
            state.request_stop("rank 1 saw enough")


def run(rank):
    torch.manual_seed(0)  # same initial weights on every rank
    model = torch.nn.Linear(4, 2)
    g = torch.Generator().manual_seed(100 + rank)  # different data on every rank
    data = [(torch.randn(3, 4, generator=g), torch.randn(3, 2, generator=g)) for _ in range(8)]
    engine = Engine(model, torch.optim.SGD(model.parameters(), lr=0.1), data,
                    loss_fn=lambda m, b: F.mse_loss(m(b[0]), b[1]), accumulate=2,
                    plugins=[StopOnRankOne()])
    state = engine.fit(max_steps=10)
    params = torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()
    return engine, [state.step, state.should_stop, state.tokens_seen, params,
                    engine.is_main_process]
"""


@pytest.mark.slow
def test_ddp_keeps_ranks_in_step_and_stops_them_together(run_ddp):
    rank0, rank1 = run_ddp(BODY)
    assert rank0[0] == rank1[0] == 2
    assert rank1[1] == "rank 1 saw enough" and rank0[1] == "another rank requested a stop"
    assert rank0[2] == 2 * 2 * 12 * 2  # steps x micro-batches x tokens x ranks
    assert rank0[3] == rank1[3]  # gradients were all-reduced, so the weights agree
    assert rank0[4] is True and rank1[4] is False


# --- hookloop.distributed: the launch, without starting processes ---------------------------


def test_launch_is_read_from_torchrun_variables_only():
    from hookloop.distributed import launch_from_env
    from hookloop.errors import ConfigError

    address = {"MASTER_ADDR": "localhost", "MASTER_PORT": "29500"}
    assert launch_from_env({}) is None
    launch = launch_from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", **address})
    assert (launch.rank, launch.world_size, launch.local_rank) == (1, 4, 1)
    with pytest.raises(ConfigError, match="not whole numbers"):
        launch_from_env({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0", **address})
    with pytest.raises(ConfigError, match="out of range: RANK=2, WORLD_SIZE=2"):
        launch_from_env({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0", **address})


def test_torchrun_variables_without_their_rendezvous_are_one_clear_error():
    from hookloop.distributed import launch_from_env, rank_device
    from hookloop.errors import ConfigError

    place = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    with pytest.raises(ConfigError, match=r"not MASTER_ADDR, MASTER_PORT; start the command"):
        launch_from_env(place)
    with pytest.raises(ConfigError, match=r"but not WORLD_SIZE, LOCAL_RANK, MASTER_ADDR"):
        launch_from_env({"RANK": "1"})
    with pytest.raises(ConfigError, match=r"or unset RANK, WORLD_SIZE, LOCAL_RANK to run one"):
        launch_from_env({**place, "MASTER_ADDR": "localhost"})
    address = {"MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert rank_device("cuda", {**place, "LOCAL_RANK": "1", **address}) == "cuda:1"
    assert rank_device("cuda", {}) == "cuda" and rank_device("cpu", place) == "cpu"


def test_a_single_process_gets_no_process_group_and_bad_settings_are_config_errors(monkeypatch):
    import torch

    from hookloop.distributed import choose_backend, on_rank0, process_group
    from hookloop.errors import ConfigError

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with process_group() as launch:
        assert launch is None and not torch.distributed.is_initialized()
        assert on_rank0(lambda: 7) == 7  # no group: a plain call
    bad = process_group(strategy="zero")
    with pytest.raises(ConfigError, match="distributed.strategy must be one of ddp, fsdp"):
        bad.__enter__()
    assert choose_backend("auto", "cpu") == "gloo" and choose_backend("gloo", "cuda") == "gloo"
    with pytest.raises(ConfigError, match="distributed.backend must be one of"):
        choose_backend("mpi", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="'nccl' needs CUDA GPUs"):
            choose_backend("nccl", "cpu")


def test_the_stop_agreement_reads_the_state_in_one_process_and_only_the_vote_under_several():
    from hookloop.distributed import StopAgreement
    from hookloop.state import State

    state = State()
    one = StopAgreement(1, "cpu")
    assert not one.requested(state)
    one.agree(state)  # no collective in one process
    state.request_stop("budget reached")
    assert one.requested(state)  # read as it is, at once

    several = StopAgreement(2, "cpu")
    assert not several.requested(state)  # asked on this rank, not yet agreed by the others
    several.agreed = True
    assert several.requested(State())  # agreed: stops even a rank that asked nothing
