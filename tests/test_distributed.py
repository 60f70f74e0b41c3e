"""Two CPU processes under torch.distributed (gloo): DDP wrapping and agreed stops."""

from __future__ import annotations

import json
import sys

import pytest

# Spawned workers re-import their module, so the program runs as a script of its own.
SCRIPT = '''
import gc, json, sys
import torch, torch.distributed as dist, torch.multiprocessing as mp
import torch.nn.functional as F
from hookloop import Engine, hookimpl


class StopOnRankOne:
    """Only rank 1 asks to stop, at step 2: every rank must stop there."""

    name = "stop_on_rank_one"

    @hookimpl
    def after_step(self, engine, state):
        if engine.rank == 1 and state.step == 2:
            state.request_stop("rank 1 saw enough")


def worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank,
                            world_size=world)
    torch.manual_seed(0)  # same initial weights on every rank
    model = torch.nn.Linear(4, 2)
    g = torch.Generator().manual_seed(100 + rank)  # different data on every rank
    data = [(torch.randn(3, 4, generator=g), torch.randn(3, 2, generator=g)) for _ in range(8)]
    engine = Engine(model, torch.optim.SGD(model.parameters(), lr=0.1), data,
                    loss_fn=lambda m, b: F.mse_loss(m(b[0]), b[1]), accumulate=2,
                    plugins=[StopOnRankOne()])
    state = engine.fit(max_steps=10)
    params = torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump([state.step, state.should_stop, state.tokens_seen, params,
                   engine.is_main_process], f)
    # Free the DDP wrapper (its reducer) before the process group goes: torch aborts at
    # exit now and then otherwise.
    del engine
    gc.collect()
    dist.barrier()  # no rank tears gloo down while another still talks to it
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(2, sys.argv[1] + "/init", sys.argv[1]), nprocs=2, join=True)
'''


@pytest.mark.slow
def test_ddp_keeps_ranks_in_step_and_stops_them_together(tmp_path, procs):
    (tmp_path / "ddp.py").write_text(SCRIPT)
    # A rank that misses the stop waits forever in an all-reduce: the timeout kills the
    # whole process group and the test fails with the workers' stderr.
    out = procs.run([sys.executable, tmp_path / "ddp.py", tmp_path])
    assert out.returncode == 0, out.stderr[-6000:]
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0[0] == rank1[0] == 2
    assert rank1[1] == "rank 1 saw enough" and rank0[1] == "another rank requested a stop"
    assert rank0[2] == 2 * 2 * 12 * 2  # steps x micro-batches x tokens x ranks
    assert rank0[3] == rank1[3]  # gradients were all-reduced, so the weights agree
    assert rank0[4] is True and rank1[4] is False
