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


RENDEZVOUS = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_launch_is_read_from_torchrun_variables_only():
    from hookloop.distributed import launch_from_env

    assert launch_from_env({}) is None
    assert launch_from_env({"MASTER_ADDR": "h", "MASTER_PORT": "1"}) is None  # not launched
    env = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", **RENDEZVOUS}
    launch = launch_from_env(env)
    assert (launch.rank, launch.world_size, launch.local_rank) == (1, 4, 1)
    assert launch_from_env({**env, "LOCAL_WORLD_SIZE": "2"}) == launch


def test_the_rank_device_of_cuda_is_this_ranks_own_gpu():
    from hookloop.distributed import rank_device

    place = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", **RENDEZVOUS}
    assert rank_device("cuda", place) == "cuda:1"
    assert rank_device("cuda", {}) == "cuda" and rank_device("cpu", place) == "cpu"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"RANK": "x"}, "torchrun variable RANK must be a whole number, got 'x'"),
        ({"WORLD_SIZE": "2.0"}, "WORLD_SIZE must be a whole number, got '2.0'"),
        ({"LOCAL_RANK": ""}, "LOCAL_RANK must be a whole number, got ''"),
        ({"RANK": "9" * 40}, "RANK must be a whole number"),
        ({"RANK": "2"}, "out of range: RANK=2, WORLD_SIZE=2, LOCAL_RANK=0"),
        ({"RANK": "-1"}, "out of range: RANK=-1"),
        ({"WORLD_SIZE": "0", "RANK": "0"}, "out of range: RANK=0, WORLD_SIZE=0"),
        ({"LOCAL_RANK": "-3"}, "LOCAL_RANK=-3 (need"),
        ({"LOCAL_WORLD_SIZE": "1", "LOCAL_RANK": "1"}, "LOCAL_RANK=1, LOCAL_WORLD_SIZE=1"),
        ({"LOCAL_WORLD_SIZE": "3"}, "LOCAL_WORLD_SIZE=3, WORLD_SIZE=2"),
        ({"WORLD_SIZE": None}, "RANK='1', LOCAL_RANK='0' set but WORLD_SIZE not"),
        ({"WORLD_SIZE": None, "LOCAL_RANK": None}, "set but WORLD_SIZE and LOCAL_RANK not"),
        ({"MASTER_ADDR": None}, "rendezvous address is not (MASTER_ADDR missing)"),
        ({"MASTER_ADDR": None, "MASTER_PORT": None}, "(MASTER_ADDR and MASTER_PORT missing)"),
        ({"MASTER_ADDR": " "}, "(MASTER_ADDR missing)"),
        ({"MASTER_PORT": "http"}, "MASTER_PORT must be a port number from 1 to 65535, got 'http'"),
        ({"MASTER_PORT": "70000"}, "got '70000'"),
        ({"MASTER_PORT": "0"}, "got '0'"),
    ],
)
def test_torchrun_variables_that_do_not_make_a_launch_are_one_config_error(change, message):
    """Checked before anything is written or any rendezvous is tried: without MASTER_ADDR
    torch.distributed raises a traceback, and a rank > 0 would wait for a rank 0 that never
    comes."""
    from hookloop.distributed import launch_from_env
    from hookloop.errors import ConfigError

    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", **RENDEZVOUS}
    for name, value in change.items():
        if value is None:
            del env[name]
        else:
            env[name] = value
    with pytest.raises(ConfigError) as info:
        launch_from_env(env)
    assert message in str(info.value)
    assert "launch with torchrun" in str(info.value) and "\n" not in str(info.value)


def test_a_rendezvous_that_cannot_be_held_is_one_config_error(monkeypatch):
    """Rank 0 of a launch whose MASTER_PORT is taken: one line, not DistNetworkError."""
    import socket

    import torch

    from hookloop.distributed import process_group
    from hookloop.errors import ConfigError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        where = rf"127.0.0.1:{port} \(DistNetworkError: .*\); check that the port is free"
        env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
        for name, value in {**env, "MASTER_PORT": port}.items():
            monkeypatch.setenv(name, value)
        group = process_group(backend="gloo", device="cpu", timeout_s=5)
        with pytest.raises(ConfigError, match=f"cannot join the rendezvous at {where}"):
            group.__enter__()
    assert not torch.distributed.is_initialized()


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
