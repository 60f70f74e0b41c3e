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
