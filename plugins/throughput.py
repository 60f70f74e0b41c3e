"""Measure training speed: tokens per second, milliseconds per step and (optionally) MFU.

    [plugins.throughput]
    flops_per_token = 0.0   # model FLOPs per trained token (about 6 x parameters); 0 = no MFU
    peak_flops = 0.0        # peak FLOP/s of one device (e.g. 989e12 for an H100 in bf16)

Writes `tokens_per_s`, `step_ms` and, when both options are set, `mfu` (model FLOPs
utilisation: achieved FLOP/s over the peak of all devices) into `state.metrics` every step.
The clock runs from `before_step` to `after_step`, so an evaluation or checkpoint between
steps is not counted as training time. On a GPU these are host timings: kernels run
asynchronously, so single steps are noisy but the average over the logged interval is right.

Hooks: `before_step`, `after_step`. Cost: two clock reads and a few float operations per
step, no sync.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING

from hookloop import hookimpl
from hookloop.options import check_number

if TYPE_CHECKING:
    from hookloop import Engine, State

__all__ = ["Throughput"]


class Throughput:
    """Tokens per second, step time and model FLOPs utilisation of each step."""

    name = "throughput"
    writes_metrics = True  # loggers (reads_metrics) run after it within a hook
    critical = False  # a measurement, not part of training
    before = ("eval",)  # stop the clock before eval's after_step evaluates

    def __init__(self, *, flops_per_token: float = 0.0, peak_flops: float = 0.0) -> None:
        check_number(self.name, "flops_per_token", flops_per_token, low=0)
        check_number(self.name, "peak_flops", peak_flops, low=0)
        self.flops_per_token, self.peak_flops = float(flops_per_token), float(peak_flops)
        self._start = 0.0
        self._tokens = 0

    @hookimpl
    def before_step(self, state: State) -> None:
        self._start, self._tokens = perf_counter(), state.tokens_seen

    @hookimpl
    def after_step(self, engine: Engine, state: State) -> None:
        seconds = perf_counter() - self._start
        tokens_per_s = (state.tokens_seen - self._tokens) / seconds if seconds > 0 else 0.0
        state.metrics["step_ms"] = 1000.0 * seconds
        state.metrics["tokens_per_s"] = tokens_per_s
        if self.flops_per_token and self.peak_flops:
            state.metrics["mfu"] = (
                tokens_per_s * self.flops_per_token / (self.peak_flops * engine.world_size)
            )
