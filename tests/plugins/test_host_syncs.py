"""No host sync in the steady state: with the default plugins, a step that logs nothing
reads no device value on the host.

On a CPU nothing waits for a device, so the test counts what would wait on one: every call
that turns a tensor into a host value (`item`, `tolist`, `bool(t)`, `float(t)`, `int(t)`,
`.cpu()`, `.numpy()`), attributed to the step in progress. Reading a host buffer after its
copy has landed is not a sync and goes through NumPy, not a tensor (the guards' one-step-late
verdict, `hookloop.plugins.stepvalues.measure.LateRead`); the loggers' batched copy is read with one
`tolist()` on the steps they log.
"""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import torch

from hookloop import Engine, hookimpl
from hookloop.loading import DEFAULT_PLUGINS, load_plugins
from hookloop.testing import TinyRegression, mse_loss, regression_batches

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")
STEPS, EVERY = 25, 10  # console's default: a line every 10 steps and at the last one


class StepClock:
    """Which step is in progress, for attributing reads (before every other plugin)."""

    name = "step_clock"

    def __init__(self) -> None:
        self.step: int | str = "start"

    @hookimpl(tryfirst=True)
    def before_step(self, state):
        self.step = state.step + 1

    @hookimpl(tryfirst=True)
    def on_fit_end(self):
        self.step = "end"


class ReadsEveryStep:
    """A plugin that reads the loss on the host every step: the test must see it."""

    name = "reads_every_step"

    @hookimpl
    def after_step(self, state):
        state.loss.item()


def count_reads(monkeypatch, tmp_path, *extra) -> Counter:
    torch.manual_seed(0)
    model = TinyRegression()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    clock = StepClock()
    engine = Engine(
        model,
        optimizer,
        regression_batches(STEPS + 5, seed=0),  # no epoch end (an evaluation) in the run
        loss_fn=mse_loss,
        val_data=regression_batches(2, seed=1),
        plugins=[*load_plugins(), clock, *extra],
        run_dir=tmp_path,
    )
    reads: Counter = Counter()
    for name in READS:
        real = getattr(torch.Tensor, name)

        def counted(t, *args, _real=real, **kwargs):
            reads[clock.step] += 1
            return _real(t, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    try:
        engine.fit(max_steps=STEPS)
    finally:
        monkeypatch.undo()
    assert engine.state.step == STEPS and set(engine.plugins) >= {"nan_guard", "csv", "clip"}
    return reads


def logging_step(step: int) -> bool:
    return step % EVERY == 0 or step == STEPS


def test_the_default_plugins_read_nothing_on_the_steps_they_do_not_log(monkeypatch, tmp_path):
    assert {"nan_guard", "clip", "divergence", "console", "csv"} <= set(DEFAULT_PLUGINS)
    reads = count_reads(monkeypatch, tmp_path)
    steps = range(1, STEPS + 1)
    assert {s: reads[s] for s in steps if not logging_step(s)} == dict.fromkeys(
        (s for s in steps if not logging_step(s)), 0
    )
    # The counting works: the logged steps read their batched copy, one per logged step.
    assert [reads[s] for s in steps if logging_step(s)] == [1, 1, 1]


def test_a_plugin_that_reads_every_step_is_seen(monkeypatch, tmp_path):
    reads = count_reads(monkeypatch, tmp_path, ReadsEveryStep())
    assert all(reads[s] >= 1 for s in range(1, STEPS + 1))


@pytest.mark.parametrize("name", ["nan_guard", "divergence", "clip", "csv", "console"])
def test_each_plugin_alone_reads_only_on_its_logging_steps(name, tmp_path, monkeypatch):
    from hookloop.testing import plugin

    torch.manual_seed(0)
    model = TinyRegression()
    clock = StepClock()
    engine = Engine(
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True),
        regression_batches(STEPS, seed=0),
        loss_fn=mse_loss,
        plugins=[plugin(name), clock],
        run_dir=tmp_path,
    )
    reads: Counter = Counter()
    for method in READS:
        real = getattr(torch.Tensor, method)
        monkeypatch.setattr(
            torch.Tensor,
            method,
            lambda t, *a, _real=real, **k: reads.update([clock.step]) or _real(t, *a, **k),
        )
    engine.fit(max_steps=STEPS)
    monkeypatch.undo()
    logged = {"console": {10, 20, 25}, "csv": {16}}.get(name, set())
    assert {s for s in range(1, STEPS + 1) if reads[s]} == logged


@pytest.mark.parametrize("fused", [True, False])
def test_hookloop_trains_own_fit_reads_the_host_only_on_the_steps_it_logs(
    fused, lm_data, tmp_path, monkeypatch
):
    """The recipe's run (`hookloop train`'s own engine, default plugins) with its default
    fused AdamW: a step that logs nothing reads no device value, a logging step one. With
    `optimizer.fused = false` the guards fall back to a read every step: the test sees it."""
    from hookloop.lm.config import load_config
    from hookloop.lm.recipe import build_run
    from hookloop.testing import TINY_RUN

    monkeypatch.setenv("HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD", "1")
    steps = 2 * EVERY + 5
    overrides = [*TINY_RUN, f"data.path={lm_data}", f"training.max_steps={steps}"]
    overrides += ["plugins.eval.every=0", "plugins.checkpoint.every=0"]  # nothing else reads
    overrides += ["plugins.progress.enabled=false", f"optimizer.fused={str(fused).lower()}"]
    run = build_run(load_config(None, overrides), tmp_path / "run")
    clock = StepClock()
    run.engine.add_plugin(clock)
    assert run.engine.optimizer.defaults["fused"] is (True if fused else None)
    reads: Counter = Counter()
    for method in READS:
        real = getattr(torch.Tensor, method)

        def counted(t, *args, _real=real, **kwargs):
            # The sampler draws window indices on the host and reads its memmap with them:
            # host tensors on any device, never a sync.
            if sys._getframe(1).f_globals.get("__name__") != "hookloop.lm.data":
                reads[clock.step] += 1
            return _real(t, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)
    run.fit()
    monkeypatch.undo()
    console = {s for s in range(1, steps + 1) if s % EVERY == 0 or s == steps}
    csv_flushes = {s for s in range(1, steps + 1) if s % 16 == 0}  # its batched copy
    read_on = {s for s in range(1, steps + 1) if reads[s]}
    if fused:
        assert read_on <= console | csv_flushes and console <= read_on, sorted(read_on)
        assert all(reads[s] == 1 for s in read_on), dict(reads)
    else:
        assert read_on == set(range(1, steps + 1))
