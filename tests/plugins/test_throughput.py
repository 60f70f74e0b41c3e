"""The throughput plugin: tokens/s, step time and MFU in the step's metrics."""

from __future__ import annotations

import pytest

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


def test_tokens_per_second_step_time_and_mfu(make_engine):
    grab = Grab()
    engine = make_engine(
        batches=4,
        accumulate=2,
        plugins=[Throughput(flops_per_token=6e3, peak_flops=1e9), grab],
    )
    engine.fit(max_steps=2)
    for row in grab.rows:
        tokens = 2 * 4 * 8  # accumulate x batch x width: elements of the inputs
        assert row["step_ms"] > 0
        assert row["tokens_per_s"] == pytest.approx(tokens / (row["step_ms"] / 1000), rel=1e-9)
        assert row["mfu"] == pytest.approx(row["tokens_per_s"] * 6e3 / 1e9)


def test_no_mfu_without_both_options(make_engine):
    grab = Grab()
    make_engine(batches=2, plugins=[Throughput(flops_per_token=6e3), grab]).fit(max_steps=2)
    assert "mfu" not in grab.rows[0] and "tokens_per_s" in grab.rows[0]


def test_bad_option_is_named():
    with pytest.raises(PluginError, match="throughput: option peak_flops must be a number >= 0"):
        Throughput(peak_flops=-1)
