"""Set the learning rate of every step as a pure function of the optimizer step.

Because the rate depends on the step number alone, a resumed run continues exactly the
same curve: there is no scheduler object whose state could drift from the checkpoint.

    [plugins.schedule]
    kind = "cosine"        # "cosine" | "constant" | "linear" | "wsd"
    warmup_steps = 0       # linear warmup from 0 to the peak lr; 0 = none
    min_lr = 0.0           # absolute lr reached at total_steps (cosine, linear, wsd)
    total_steps = 0        # length of the curve; 0 = the run's length (max_steps given to fit())
    decay_fraction = 0.2   # wsd only: the final fraction of total_steps that decays

The peak lr is each parameter group's lr when the run starts, kept in
`group["initial_lr"]` (saved with the optimizer, so a resume keeps it). For optimizer step
`k` (1-based: the k-th update) the plugin sets `lr = lr_at(k, ...)`, the seed's closed form:
warmup `peak * k / warmup_steps` for `k <= warmup_steps`, then
`min_lr + (peak - min_lr) * 0.5 * (1 + cos(pi * p))` with
`p = (k - warmup_steps) / (total_steps - warmup_steps)`. Counting from 1 means no update is
wasted at lr 0 and the last update of the run uses exactly `min_lr`. Past `total_steps` the
rate stays at `min_lr` (the seed's cosine would climb back up).

The plugin also checks its own curve for `hookloop doctor` (the `doctor_checks` hook): the
`schedule` check computes the lr at the first step, the end of warmup, the middle of the
decay and the last step with `lr_at`, and fails when the lr is never positive, does not warm
up to the peak, or does not end at `min_lr` (`check_curve`).

Hooks: `on_fit_start` (resolve total_steps, record peaks), `before_step` (set lr, write the
`lr` metric), `doctor_checks`. Cost: a few float operations per step, no tensor work.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from hookloop import PluginError, hookimpl
from hookloop.findings import FAIL, PASS, WARN, Finding
from hookloop.options import check_choice, check_int, check_number

if TYPE_CHECKING:
    from hookloop import Engine, State
    from hookloop.findings import Check, Subject

__all__ = ["KINDS", "LRSchedule", "check_curve", "lr_at"]

KINDS = ("cosine", "constant", "linear", "wsd")


def lr_at(
    step: int,
    *,
    peak_lr: float,
    kind: str = "cosine",
    warmup_steps: int = 0,
    total_steps: int,
    min_lr: float = 0.0,
    decay_fraction: float = 0.2,
) -> float:
    """The learning rate of the `step`-th optimizer update (1-based) of a schedule.

    Args:
        step: The update number; 0 gives 0.0 when there is a warmup.
        peak_lr: The rate reached at the end of warmup.
        kind: `cosine` (decay to min_lr along half a cosine), `constant` (peak after warmup),
            `linear` (straight line to min_lr), `wsd` (warmup, stable at peak, then a linear
            decay to min_lr over the last `decay_fraction` of the steps).
        warmup_steps: Steps of linear warmup from 0 to `peak_lr`.
        total_steps: The step at which the decay reaches `min_lr`.
        min_lr: The floor of the decay, absolute.
        decay_fraction: The decaying share of `total_steps` for `wsd`.
    """
    if warmup_steps > 0 and step <= warmup_steps:
        return peak_lr * step / warmup_steps
    if kind == "constant":
        return peak_lr
    if step >= total_steps:
        return min_lr
    if kind == "wsd":
        decay_start = max(warmup_steps, total_steps - round(decay_fraction * total_steps))
        if step <= decay_start:
            return peak_lr
        progress = (step - decay_start) / (total_steps - decay_start)
        return peak_lr + (min_lr - peak_lr) * progress
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    if kind == "linear":
        return peak_lr + (min_lr - peak_lr) * progress
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LRSchedule:
    """Warmup followed by cosine, constant, linear or warmup-stable-decay learning rates."""

    name = "schedule"
    writes_metrics = True  # loggers (reads_metrics) run after it within a hook

    def __init__(
        self,
        *,
        kind: str = "cosine",
        warmup_steps: int = 0,
        min_lr: float = 0.0,
        total_steps: int = 0,
        decay_fraction: float = 0.2,
    ) -> None:
        check_choice(self.name, "kind", kind, KINDS)
        check_int(self.name, "warmup_steps", warmup_steps, minimum=0)
        check_int(self.name, "total_steps", total_steps, minimum=0)
        check_number(self.name, "min_lr", min_lr, low=0)
        check_number(self.name, "decay_fraction", decay_fraction, low=0, high=1, open_low=True)
        if total_steps and warmup_steps >= total_steps:
            raise PluginError(
                f"schedule: warmup_steps ({warmup_steps}) must be less than total_steps ({total_steps})"
            )
        self.kind, self.warmup_steps, self.min_lr = kind, warmup_steps, float(min_lr)
        self.total_steps, self.decay_fraction = total_steps, float(decay_fraction)
        self.resolved_total = total_steps

    @hookimpl
    def on_fit_start(self, engine: Engine) -> None:
        from hookloop.plugins.loggers.base import planned_steps  # here: keep the module torch-free

        total = self.total_steps or planned_steps(engine)
        if not total:
            raise PluginError(
                "schedule: cannot tell how long the run is; set [plugins.schedule] total_steps "
                "or pass max_steps to fit()"
            )
        if self.kind != "constant" and self.warmup_steps >= total:
            raise PluginError(
                f"schedule: warmup_steps ({self.warmup_steps}) must be less than the run's "
                f"{total} steps; lower warmup_steps"
            )
        for group in engine.optimizer.param_groups:
            peak = group.setdefault("initial_lr", group["lr"])
            if self.kind != "constant" and self.min_lr > peak:
                raise PluginError(f"schedule: min_lr ({self.min_lr}) is above the peak lr ({peak})")
        self.resolved_total = total

    def lr(self, step: int, peak_lr: float, total_steps: int | None = None) -> float:
        """The rate of update `step` (1-based) for a group whose peak is `peak_lr`, on a
        curve of `total_steps` (default: the length resolved when the run started)."""
        return lr_at(
            step,
            peak_lr=peak_lr,
            kind=self.kind,
            warmup_steps=self.warmup_steps,
            total_steps=total_steps or self.resolved_total,
            min_lr=self.min_lr,
            decay_fraction=self.decay_fraction,
        )

    @hookimpl
    def before_step(self, engine: Engine, state: State) -> None:
        step = state.step + 1  # the update about to happen, counted from 1
        for group in engine.optimizer.param_groups:
            group["lr"] = self.lr(step, group["initial_lr"])
        state.metrics["lr"] = engine.optimizer.param_groups[0]["lr"]

    @hookimpl
    def doctor_checks(self) -> list[Check]:
        return [self.check]

    def check(self, subject: Subject) -> Finding:
        """The doctor's `schedule` check: this plugin's curve for the subject's run.

        The run's length is `total_steps`, else the subject's `max_steps`, else the engine's
        planned length; the peak is group 0's `initial_lr` (or `lr`).
        """
        from hookloop.plugins.loggers.base import planned_steps  # here: keep the module torch-free

        engine = subject.engine
        total = (
            self.total_steps
            or subject.max_steps
            or (planned_steps(engine) if engine is not None else None)
        )
        if not total:
            return Finding(
                "schedule", WARN, "the run length is unknown: pass max_steps to check the schedule"
            )
        group = subject.optimizer.param_groups[0]
        peak = float(group.get("initial_lr", group["lr"]))
        return check_curve(
            lambda step: self.lr(step, peak, total),
            kind=self.kind,
            peak_lr=peak,
            warmup_steps=self.warmup_steps,
            total_steps=total,
            min_lr=self.min_lr,
        )


def check_curve(
    lr: Callable[[int], float],
    *,
    kind: str,
    peak_lr: float,
    warmup_steps: int,
    total_steps: int,
    min_lr: float,
) -> Finding:
    """Judge a learning-rate curve `lr(step)` (1-based) against what its options promise.

    Reads the lr at the first step, the end of warmup, the middle of the decay and the last
    step. FAIL when the lr is never positive (or not finite), when it does not rise from
    step 1 to exactly `peak_lr` at the end of a warmup, or when a decaying `kind` does not
    end at `min_lr`; else PASS. The detail lists the lrs read.
    """
    points = sorted({1, max(warmup_steps, 1), (warmup_steps + total_steps) // 2, total_steps})
    at = {step: float(lr(step)) for step in points}
    lrs = list(at.values())
    detail = (
        f"{kind}: "
        + ", ".join(f"step {k}: {v:.3g}" for k, v in at.items())
        + f" (peak {peak_lr:.3g}, warmup {warmup_steps})"
    )
    if not all(math.isfinite(v) and v >= 0 for v in lrs) or max(lrs) == 0:
        return Finding("schedule", FAIL, detail + ": the lr is not finite, or never positive")
    warm = at[max(warmup_steps, 1)]
    if warmup_steps > 1 and not (at[1] < warm and math.isclose(warm, peak_lr, rel_tol=1e-6)):
        return Finding(
            "schedule", FAIL, detail + f": does not warm up to the peak over {warmup_steps} steps"
        )
    if kind != "constant" and not math.isclose(
        at[total_steps], min_lr, rel_tol=1e-6, abs_tol=1e-12
    ):
        return Finding("schedule", FAIL, detail + f": does not decay to min_lr {min_lr:.3g}")
    return Finding("schedule", PASS, detail)
