"""The throughput plugin: tokens/s, step time and MFU in the step's metrics."""

from __future__ import annotations

import pytest
import torch.nn.functional as F

from hookloop import PluginError, hookimpl
from hookloop.plugins.throughput import Throughput


class Grab:
    name = "grab"
    after = ("throughput",)

    def __init__(self) -> None:
        self.rows = []

    @hookimpl
    def after_step(self, state):
        self.rows.append(dict(state.metrics))


class FakeClock:
    """A perf_counter that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class BetweenSteps:
    """Spends 7 fake seconds after each step (an evaluation, say): not training time."""

    name = "between_steps"
    after = ("throughput",)

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    @hookimpl
    def after_step(self):
        self.clock.now += 7.0


def test_tokens_per_second_step_time_and_mfu_against_a_fake_clock(make_engine, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("hookloop.plugins.throughput.perf_counter", clock)

    def slow_loss(model, batch):  # each micro-batch takes 0.125 fake seconds
        clock.now += 0.125
        return F.mse_loss(model(batch[0]), batch[1])

    grab = Grab()
    plugins = [Throughput(flops_per_token=6e3, peak_flops=1e9), BetweenSteps(clock), grab]
    make_engine(batches=6, accumulate=2, loss_fn=slow_loss, plugins=plugins).fit(max_steps=3)
    tokens = 2 * 4 * 8  # accumulate x batch x width: elements of the inputs
    assert [row["step_ms"] for row in grab.rows] == [250.0] * 3
    assert [row["tokens_per_s"] for row in grab.rows] == [tokens / 0.25] * 3  # 256 tokens/s
    assert [row["mfu"] for row in grab.rows] == [pytest.approx(256 * 6e3 / 1e9)] * 3


def test_no_mfu_without_both_options(make_engine):
    grab = Grab()
    make_engine(batches=2, plugins=[Throughput(flops_per_token=6e3), grab]).fit(max_steps=2)
    assert "mfu" not in grab.rows[0] and "tokens_per_s" in grab.rows[0]


def test_bad_option_is_named():
    with pytest.raises(PluginError, match="throughput: option peak_flops must be a number >= 0"):
        Throughput(peak_flops=-1)
