"""Show a progress bar over the run's steps, with the loss and learning rate.

    [plugins.progress]
    enabled = "auto"   # "auto": only when stdout is a terminal and CI is not set; true; false
    refresh_s = 0.5    # seconds between updates of the loss / lr shown on the bar

The bar (tqdm, optional extra `[progress]`) goes to standard output. With `enabled = "auto"`
it stays off when standard output is not a terminal or the `CI` environment variable is set,
so log files and CI output stay clean; if tqdm is not installed it is silently off (a debug
log line says why). `enabled = true` forces the bar on and is a `PluginError` without tqdm.

Hooks: `on_fit_start`, `after_step`, `on_fit_end`, `on_exception`. Cost: a counter update
and filing the step's values in the loggers' shared buffer (`hookloop.plugins.stepvalues.steplog`)
per step; at most once every `refresh_s` seconds the rows waiting there are sent to the host
without waiting, and the bar shows the newest loss that has landed (on a GPU, usually
that of a step or so earlier).
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any

import structlog

from hookloop import PluginError, hookimpl
from hookloop.logs import debug
from hookloop.options import check_number
from hookloop.plugins.loggers.base import ClosesAtEnd, planned_steps
from hookloop.plugins.stepvalues.steplog import StepLog

if TYPE_CHECKING:
    from hookloop import Engine, State

__all__ = ["Progress"]

log = structlog.get_logger(__name__)


class Progress(ClosesAtEnd):
    """A tqdm bar over optimizer steps."""

    name = "progress"
    critical = False  # a display: failing must not stop training
    reads_metrics = True  # after the metric writers: show this step's lr

    def __init__(self, *, enabled: bool | str = "auto", refresh_s: float = 0.5) -> None:
        if enabled not in ("auto", True, False):
            raise PluginError(
                f"progress: option enabled must be 'auto', true or false, got {enabled!r}"
            )
        check_number(self.name, "refresh_s", refresh_s, low=0)
        if enabled is True:
            try:
                import tqdm  # noqa: F401
            except ImportError as exc:
                raise PluginError(
                    "progress: enabled = true needs tqdm; run `pip install '.[progress]'` in "
                    "the hookloop checkout"
                ) from exc
        self.enabled, self.refresh_s = enabled, float(refresh_s)
        self.bar: Any = None
        self.log: StepLog | None = None
        self._shown = 0.0

    def wanted(self) -> bool:
        """Whether to show a bar in this process, for `enabled = "auto"`."""
        return sys.stdout.isatty() and not os.environ.get("CI")

    @hookimpl
    def on_fit_start(self, engine: Engine, state: State) -> None:
        self.close()
        if not engine.is_main_process or not (
            self.enabled is True or (self.enabled and self.wanted())
        ):
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            debug(
                log,
                "progress_off",
                reason="tqdm is not installed (pip install '.[progress]' in the hookloop checkout)",
            )
            return
        self.bar = tqdm(
            total=planned_steps(engine),
            initial=state.step,
            unit="step",
            file=sys.stdout,
            dynamic_ncols=True,
            desc="train",
        )
        self._shown = 0.0
        self.log = StepLog.of(engine)

    @hookimpl
    def after_step(self, state: State) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        now = time.monotonic()
        assert self.log is not None
        self.log.record(state)  # no tensor work
        if now - self._shown >= self.refresh_s:
            self._shown = now
            self.log.send()  # without waiting: show what has landed
            latest = self.log.latest or {}
            postfix = {"loss": f"{latest['loss']:.4f}"} if "loss" in latest else {}
            if "lr" in latest:
                postfix["lr"] = f"{latest['lr']:.3e}"
            self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        """Close it now; the hooks call this at the end of fit()."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
