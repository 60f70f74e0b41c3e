"""What the experiment-tracker plugins (`mlflow`, `wandb`) share.

Not a plugin: no entry point. A tracker plugin subclasses `TrackerPlugin`, names its
`TrackerBackend` (the few calls that talk to the tracker: open or resume a run, log
parameters, log rows of metrics, finish with artifacts) and gives that backend's options.

**Almost nothing per step, no host syncs.** `after_step` files the step's row in the
loggers' shared buffer (`hookloop.plugins.stepvalues.steplog`: the loss and `state.metrics` kept as
tensors, no tensor work). Every `flush_every` logged steps the rows are sent to the host in
one batched copy (asynchronous on a GPU) and handed on once landed, with `ema_loss` and
`ppl` computed on the host. The rows then go to the tracker process
(`hookloop.plugins.tracking.process`), which makes every tracker call outside the training
process: a slow store, a down server or a network timeout never stalls a training step, and
the tracker's own Python never competes with the loop for the interpreter lock. Only
`fit()`'s end waits, at most `timeout` seconds, for the tracker to finish. Values in
`state.metrics` are read late, so a plugin must put a new tensor there each step, not
change one in place.

**Failures.** An error in the tracker process is raised by the plugin in its next hook, so
the engine's policy for non-critical plugins applies: it is logged once, journaled
(`plugin_disabled`) and the plugin is unregistered; training goes on.

**Each step once.** The tracker's run id is saved in the plugin's checkpoint state, so a
resume continues the same run. On opening a resumed run the backend reports the last step
the tracker already holds for each metric (a run killed between a logged step and its
checkpoint has logged steps the resumed run trains again); rows at or below it are not sent
again. hookloop's resume is exact, so the values already there are the ones it would send.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from hookloop import PluginError, hookimpl
from hookloop.options import check_int, check_number
from hookloop.plugins.stepvalues.hostcopy import to_floats
from hookloop.plugins.stepvalues.steplog import MAX_UNSENT, RowReader, StepLog, StepRow
from hookloop.plugins.tracking.backend import TrackerBackend, TrackerRow
from hookloop.plugins.tracking.link import TrackerLink

if TYPE_CHECKING:
    from hookloop import Engine, State

__all__ = ["TrackerBackend", "TrackerPlugin", "flatten_config", "run_tags"]

log = structlog.get_logger(__name__)


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The config as `{"model.d_model": "128", ...}`: dotted keys, values as strings."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def run_tags(engine: Engine) -> dict[str, str]:
    """Tags every tracker run gets: hookloop version, world size, git commit when known."""
    from hookloop import __version__

    tags = {"hookloop.version": __version__, "hookloop.world_size": str(engine.world_size)}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    if commit:
        tags["git.commit"] = commit
    return tags


class TrackerPlugin:
    """Base of the tracker plugins: files each step's row, ships batches to a tracker
    process."""

    name = "tracker"
    critical = False  # an optional viewer: failing must not stop training
    reads_metrics = True  # after every writes_metrics plugin in a hook
    after = ("csv",)
    backend_class = ""
    """`"module:Class"` of the `TrackerBackend`, built in the tracker process."""

    def __init__(self, *, every: int = 1, flush_every: int = 50, timeout: float = 60.0) -> None:
        check_int(self.name, "every", every, minimum=1)
        check_int(self.name, "flush_every", flush_every, minimum=1)
        check_number(self.name, "timeout", timeout, low=0)
        self.every, self.flush_every, self.timeout = every, flush_every, float(timeout)
        self.reader = RowReader()
        self.log: StepLog | None = None
        self.run_id: str | None = None  # saved in checkpoints; continued on resume
        self._resume_id: str | None = None
        # rows on their way: (step, values known now, values still being copied)
        self._queued: deque[tuple[int, dict[str, float], StepRow | None]] = deque()
        self._seen_step = -1
        self._pending: dict[str, float] = {}  # eval metrics waiting for their step's row
        self._link: TrackerLink | None = None

    def backend_options(self, engine: Engine) -> dict[str, Any]:
        """The backend's keyword arguments for this run (JSON; at `on_fit_start`)."""
        raise NotImplementedError

    @staticmethod
    def require(module: str, extra: str) -> None:
        """Check that the tracker's package is installed (without importing it: only the
        tracker process does), or raise the one-line error saying how to get it."""
        import importlib.util

        if importlib.util.find_spec(module) is None:
            raise PluginError(
                f"{extra}: the {module} package is not installed; run "
                f"`pip install '.[{extra}]'` in the hookloop checkout or disable the plugin "
                f"(-p no:{extra})"
            )

    # --- hooks ---------------------------------------------------------------------------

    @hookimpl
    def on_fit_start(self, engine: Engine, state: State) -> None:
        if self._link is not None:  # a fit() that never reached its end
            self._link.abandon()
            self._link = None
        self._queued.clear()
        self._seen_step, self._pending = state.step, {}
        if not engine.is_main_process:
            return
        self._link = TrackerLink(
            self.name,
            self.backend_class,
            self.backend_options(engine),
            self._resume_id or self.run_id,
            flatten_config(engine.config),
            run_tags(engine),
            run_dir=engine.run_dir,
            timeout=self.timeout,
        )
        self.log = StepLog.of(engine)
        self.log.join(self.reader)

    @hookimpl
    def after_step(self, state: State) -> None:
        self._seen_step = state.step
        if self._link is None or self.log is None:
            return
        self._link.raise_error()
        row = self.log.record(state)  # no tensor work
        if state.step % self.every == 0 or self._pending:
            self._queued.append((state.step, self._pending, row))
            self._pending = {}
            if len(self._queued) >= self.flush_every or self.log.unsent >= MAX_UNSENT:
                self.log.send()  # without waiting: the rows go on once landed
        if len(self._queued) >= self.flush_every:
            self._send(wait=False)

    @hookimpl
    def on_eval_end(self, state: State, metrics: dict[str, float]) -> None:
        if self._link is None:
            return
        values = to_floats(metrics)
        if self._queued and self._queued[-1][0] == state.step:
            self._queued[-1][1].update(values)  # its step's row is still here
        elif state.step > self._seen_step:  # inside after_step, before this plugin's turn
            self._pending.update(values)
        else:  # after its step (an epoch end, after fit): a row of its own, in step order
            self._queued.append((state.step, values, None))

    @hookimpl
    def on_save_checkpoint(self) -> dict[str, Any] | None:
        if self._link is None:
            return None
        self._send()
        self.run_id = self._link.wait_for_run(self.timeout)
        return {"run_id": self.run_id, "ema_loss": self.reader.ema}

    @hookimpl
    def on_load_checkpoint(self, saved: dict[str, Any]) -> None:
        self._resume_id = saved.get("run_id")
        self.reader.ema = saved.get("ema_loss")

    @hookimpl(trylast=True)  # after csv closed metrics.csv and checkpoint saved the model
    def on_fit_end(self, engine: Engine) -> None:
        self._finish(engine, "FINISHED")

    @hookimpl(trylast=True)
    def on_exception(self, engine: Engine, error: BaseException) -> None:
        self._finish(engine, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")

    # --- helpers -------------------------------------------------------------------------

    def _send(self, *, wait: bool = True) -> None:
        """Hand the queued rows whose values have landed (with `wait`: all) to the tracker."""
        rows: list[TrackerRow] = []
        landed: dict[int, dict[str, float]] = {}
        if self.log is not None:
            if wait:
                self.log.flush()
            else:
                self.log.receive()
            landed = {id(row): values for row, values in self.reader.rows(self.log)}
            if self.reader.last is not None:
                landed.setdefault(id(self.reader.last[0]), self.reader.last[1])
        while self._queued:
            step, extra, row = self._queued[0]
            if row is not None and id(row) not in landed:
                break
            self._queued.popleft()
            rows.append((step, {**(landed[id(row)] if row is not None else {}), **extra}))
        if rows and self._link is not None:
            self._link.send_rows(rows)

    def _finish(self, engine: Engine, status: str) -> None:
        link = self._link
        if link is None:
            return
        if self._pending and engine.state.step:
            self._queued.append((engine.state.step, self._pending, None))
            self._pending = {}
        try:
            self._send()
        finally:
            self._link = None
        with tempfile.TemporaryDirectory(prefix=f"hookloop-{self.name}-") as scratch:
            try:
                files = self.artifacts(engine, Path(scratch))
            except BaseException:
                link.abandon()
                raise
            try:
                link.close(status, files, self.timeout)
            finally:
                self.run_id = link.run_id or self.run_id

    def artifacts(self, engine: Engine, scratch: Path) -> list[Path]:
        """Files uploaded at the end: config.toml, metrics.csv, metrics.png (drawn here when
        matplotlib is installed) and the final model, written to `scratch/model.safetensors`."""
        from safetensors.torch import save_model

        files: list[Path] = []
        run_dir = engine.run_dir
        if run_dir is not None:
            files = [run_dir / n for n in ("config.toml", "metrics.csv") if (run_dir / n).is_file()]
        if run_dir is not None and (run_dir / "metrics.csv").is_file():
            try:
                from hookloop.plotting import plot_run

                files.append(plot_run(run_dir, run_dir / "metrics.png"))
            except Exception as exc:  # no matplotlib, or nothing to plot yet
                log.info(f"{self.name}_no_plot", reason=str(exc))
        save_model(engine.model, str(scratch / "model.safetensors"))
        return [*files, scratch / "model.safetensors"]
