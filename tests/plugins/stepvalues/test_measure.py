"""hookloop.plugins.stepvalues.measure: the one-sync step reader, also under DDP (two gloo
processes)."""

from __future__ import annotations

import json

import pytest

BODY = """
from hookloop.plugins.stepvalues.measure import step_scalars
from hookloop.plugins.nan_guard import NanGuard


class Record:
    \"\"\"Keep what every rank read for each step.\"\"\"

    name = "record"
    after = ("nan_guard",)

    def __init__(self):
        self.seen = []

    @hookimpl
    def after_backward(self, engine, state):
        s = step_scalars(engine, state)
        self.seen.append([state.step, s.loss, s.grad_norm, state.skip_step])


def run(rank):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    g = torch.Generator().manual_seed(100 + rank)
    data = [(torch.randn(3, 4, generator=g), torch.randn(3, 2, generator=g)) for _ in range(4)]
    if rank == 1:
        data[2][0][0, 0] = float("nan")  # only rank 1 sees bad data at step 2
    record = Record()
    engine = Engine(model, torch.optim.SGD(model.parameters(), lr=0.1), data,
                    loss_fn=lambda m, b: F.mse_loss(m(b[0]), b[1]),
                    plugins=[NanGuard(action="skip"), record])
    engine.fit(max_steps=4)
    return engine, {"seen": record.seen,
                    "skipped": engine.plugins["nan_guard"].plugin.policy.skipped,
                    "params": [p.detach().flatten().tolist() for p in model.parameters()]}
"""


@pytest.mark.slow
def test_ranks_read_the_same_scalars_and_skip_the_same_step(run_ddp):
    rank0, rank1 = run_ddp(BODY)
    assert rank0["seen"] == rank1["seen"]  # same averaged loss and norm on both ranks
    assert [row[3] for row in rank0["seen"]] == [False, False, True, False]
    assert rank0["skipped"] == rank1["skipped"] == 1
    assert rank0["params"] == rank1["params"]


def test_step_scalars_reuse_the_clip_norm_and_are_cached_per_step(make_engine):
    import torch

    from hookloop import hookimpl
    from hookloop.plugins.clip import GradClip
    from hookloop.plugins.stepvalues.measure import step_scalars

    seen = []

    class Read:
        name = "read"
        after = ("clip",)

        @hookimpl
        def after_backward(self, engine, state):
            first, again = step_scalars(engine, state), step_scalars(engine, state)
            seen.append(
                (
                    first is again,
                    first.grad_norm,
                    float(state.metrics["grad_norm"]),
                    first.loss,
                    float(state.loss),
                )
            )

    engine = make_engine(batches=3, plugins=[GradClip(max_norm=0.01), Read()])
    engine.fit(max_steps=3)
    assert len(seen) == 3
    for cached, norm, clip_norm, loss, state_loss in seen:
        assert cached and norm == pytest.approx(clip_norm) and loss == pytest.approx(state_loss)
    assert all(isinstance(v, torch.Tensor) for v in [engine.state.metrics["grad_norm"]])


def test_a_non_finite_gradient_makes_the_step_not_finite_and_is_named():
    import torch

    from hookloop.plugins.stepvalues.measure import StepScalars, bad_gradient_names

    model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(6)])
    for p in model.parameters():
        p.grad = torch.full_like(p, float("inf"))
    names = bad_gradient_names(model, limit=3)
    assert names == ["0.weight", "0.bias", "1.weight", "... 9 more"]
    assert not StepScalars(loss=1.0, grad_norm=float("inf")).finite
    assert not StepScalars(loss=float("nan"), grad_norm=1.0).finite
    assert StepScalars(loss=1.0, grad_norm=2.0).finite


def test_an_overflowing_norm_of_finite_gradients_names_the_largest():
    import torch

    from hookloop.plugins.stepvalues.measure import bad_gradient_names

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model[1].weight.grad.fill_(3e30)  # finite, but its float32 norm is inf
    assert bad_gradient_names(model)[0] == "1.weight (max |grad| 3e+30)"


@pytest.mark.slow
def test_an_absurd_learning_rate_stops_hookloop_train_with_one_line(
    hookloop_cli, tiny_lm_args, tmp_path
):
    pytest.importorskip("hookloop.lm.recipe")
    out = hookloop_cli(
        "train",
        *tiny_lm_args,
        "--set",
        "training.max_steps=8",
        "--set",
        "optimizer.lr=1e4",
        "-p",
        "no:eval",
        "-p",
        "no:progress",
        "--run-dir",
        "run",
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stderr
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("hookloop train: error:")]
    assert line.startswith("hookloop train: error: nan_guard: step ")
    assert "emergency-step-" in line and "Traceback" not in out.stderr
    events = [json.loads(x)["event"] for x in (tmp_path / "run" / "journal.jsonl").open()]
    assert "nan_detected" in events and "stop" in events
