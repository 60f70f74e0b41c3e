"""What the experiment-tracker plugins (`mlflow`, `wandb`) share.

Not a plugin: no entry point. A tracker plugin subclasses `TrackerPlugin`, names its
`TrackerBackend` (the few calls that talk to the tracker: open or resume a run, log
parameters, log rows of metrics, finish with artifacts) and gives that backend's options.

**Almost nothing per step, no host syncs.** `after_step` keeps references: the step's loss
tensor, and on a logged step the `state.metrics` entries. Every `flush_every` logged steps
those tensors are stacked (one per device and dtype) and copied to the host in one
transfer (asynchronous on a GPU), which is read at the next flush, when it has long landed.
The rows, with `ema_loss` and `ppl` computed on the host, then go to the tracker process
(`hookloop.plugins._trackerproc`), which makes every tracker call outside the training
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

import math
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import torch

from hookloop import PluginError, hookimpl
from hookloop.options import check_int, check_number
from hookloop.plugins._metrics import METRIC_WRITERS
from hookloop.plugins._trackerlink import TrackerLink
from hookloop.plugins._trackerproc import Row, TrackerBackend

if TYPE_CHECKING:
    from hookloop import Engine, State

__all__ = ["HostBatch", "Row", "TrackerBackend", "TrackerPlugin", "flatten_config", "run_tags"]

log = structlog.get_logger(__name__)

EMA_BETA = 0.9
"""The smoothing of `ema_loss`, as the other loggers use it."""
MAX_HELD = 1024
"""Losses kept on the device before a flush even when few steps are logged (`every`)."""


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


class HostBatch:
    """Scalar tensors on their way to the host: one stacked copy per device and dtype.

    CPU tensors are stacked now and read with one `tolist()`; CUDA tensors are stacked and
    copied without blocking, followed by an event, so `floats()` waits only for the work
    queued before the copy (read a flush later, nothing). Other devices are read in one
    blocking transfer each.
    """

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self.size = len(tensors)
        groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, tensor in enumerate(tensors):
            groups.setdefault((tensor.device, tensor.dtype), []).append(i)
        self._parts: list[tuple[list[int], torch.Tensor, Any]] = []
        with torch.no_grad():
            for (device, _), indices in groups.items():
                stacked = torch.stack([_scalar(tensors[i]) for i in indices])
                event = None
                if device.type == "cuda":
                    stacked = stacked.to("cpu", non_blocking=True)
                    event = torch.cuda.Event()
                    event.record()
                elif device.type != "cpu":
                    stacked = stacked.cpu()
                self._parts.append((indices, stacked, event))

    def floats(self) -> list[float]:
        """The values, in the order given (waits for a copy that has not landed)."""
        values = [math.nan] * self.size
        for indices, host, event in self._parts:
            if event is not None:
                event.synchronize()
            for i, value in zip(indices, host.double().tolist(), strict=True):
                values[i] = value
        return values


def _scalar(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.dim() == 0 else tensor.reshape(())  # a reshape is an op: skip it


class _Flush:
    """One flush: the losses since the previous one and the rows logged meanwhile, their
    tensors already on their way to the host."""

    def __init__(self, losses: list[torch.Tensor], rows: list[tuple[int, int | None, dict]]):
        tensors = list(losses)
        self.losses = len(losses)
        self.rows: list[tuple[int, int | None, dict[str, float], dict[str, int]]] = []
        for step, loss_index, values in rows:
            known: dict[str, float] = {}
            slots: dict[str, int] = {}
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    if value.numel() == 1:
                        slots[key] = len(tensors)
                        tensors.append(value)
                elif isinstance(value, (int, float)):  # bool is an int: True -> 1.0
                    known[key] = float(value)
            self.rows.append((step, loss_index, known, slots))
        self.copy = HostBatch(tensors)

    def resolve(self, ema: float | None) -> tuple[list[Row], float | None]:
        """The rows as floats with `ema_loss` and `ppl`, and the average after the last loss."""
        floats = self.copy.floats()
        emas = []
        for loss in floats[: self.losses]:
            ema = loss if ema is None else ema + (1.0 - EMA_BETA) * (loss - ema)
            emas.append(ema)
        rows: list[Row] = []
        for step, index, known, slots in self.rows:
            values: dict[str, float] = {}
            if index is not None:
                loss = floats[index]
                values.update(loss=loss, ema_loss=emas[index], ppl=math.exp(min(loss, 700.0)))
            values.update(known)
            values.update({key: floats[i] for key, i in slots.items()})
            rows.append((step, values))
        return rows, ema


class TrackerPlugin:
    """Base of the tracker plugins: keeps each step's tensors, ships rows in batches."""

    name = "tracker"
    critical = False  # an optional viewer: failing must not stop training
    after = (*METRIC_WRITERS, "csv")
    backend_class = ""
    """`"module:Class"` of the `TrackerBackend`, built in the tracker process."""

    def __init__(self, *, every: int = 1, flush_every: int = 50, timeout: float = 60.0) -> None:
        check_int(self.name, "every", every, minimum=1)
        check_int(self.name, "flush_every", flush_every, minimum=1)
        check_number(self.name, "timeout", timeout, low=0)
        self.every, self.flush_every, self.timeout = every, flush_every, float(timeout)
        self.ema: float | None = None  # the smoothed loss after the last flushed step
        self.run_id: str | None = None  # saved in checkpoints; continued on resume
        self._resume_id: str | None = None
        self._link: TrackerLink | None = None
        self._start_collecting(-1)

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
                f"`pip install 'hookloop[{extra}]'` or disable the plugin (-p no:{extra})"
            )

    # --- hooks ---------------------------------------------------------------------------

    @hookimpl
    def on_fit_start(self, engine: Engine, state: State) -> None:
        if self._link is not None:  # a fit() that never reached its end
            self._link.abandon()
            self._link = None
        self._start_collecting(state.step)
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

    @hookimpl
    def after_step(self, state: State) -> None:
        if self._link is None:
            return
        self._link.raise_error()
        self._seen_step = state.step
        if state.loss is not None:
            self._losses.append(state.loss)  # detached by the engine; read at a flush
        if state.step % self.every == 0 or self._pending:
            index = len(self._losses) - 1 if state.loss is not None else None
            self._rows.append((state.step, index, {**state.metrics, **self._pending}))
            self._pending = {}
            if len(self._rows) >= self.flush_every:
                self._flush()
        elif len(self._losses) >= MAX_HELD:
            self._flush()

    @hookimpl
    def on_eval_end(self, state: State, metrics: dict[str, Any]) -> None:
        if self._link is None:
            return
        if self._rows and self._rows[-1][0] == state.step:
            self._rows[-1][2].update(metrics)  # its step's row is still here
        elif state.step > self._seen_step:  # inside after_step, before this plugin's turn
            self._pending.update(metrics)
        else:  # after its step (an epoch end, after fit): a row of its own, in step order
            self._rows.append((state.step, None, dict(metrics)))

    @hookimpl
    def on_save_checkpoint(self) -> dict[str, Any] | None:
        if self._link is None:
            return None
        self._flush(wait=True)
        self.run_id = self._link.wait_for_run(self.timeout)
        return {"run_id": self.run_id, "ema_loss": self.ema}

    @hookimpl
    def on_load_checkpoint(self, saved: dict[str, Any]) -> None:
        self._resume_id = saved.get("run_id")
        self.ema = saved.get("ema_loss")

    @hookimpl(trylast=True)  # after csv closed metrics.csv and checkpoint saved the model
    def on_fit_end(self, engine: Engine) -> None:
        self._finish(engine, "FINISHED")

    @hookimpl(trylast=True)
    def on_exception(self, engine: Engine, error: BaseException) -> None:
        self._finish(engine, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")

    # --- helpers -------------------------------------------------------------------------

    def _start_collecting(self, step: int) -> None:
        self._seen_step = step
        self._losses: list[torch.Tensor] = []
        self._rows: list[tuple[int, int | None, dict[str, Any]]] = []  # (step, loss, values)
        self._pending: dict[str, Any] = {}  # eval metrics waiting for their step's row
        self._landing: _Flush | None = None  # the previous flush, read at the next one

    def _flush(self, *, wait: bool = False) -> None:
        """Start copying what was collected; send the previous flush's rows (all, if `wait`)."""
        flushes = [self._landing] if self._landing is not None else []
        if self._losses or self._rows:
            flushes.append(_Flush(self._losses, self._rows))
            self._losses, self._rows = [], []
        self._landing = None if wait or not flushes else flushes.pop()
        for flush in flushes:
            rows, self.ema = flush.resolve(self.ema)
            if rows and self._link is not None:
                self._link.send_rows(rows)

    def _finish(self, engine: Engine, status: str) -> None:
        link = self._link
        if link is None:
            return
        if self._pending and engine.state.step:
            self._rows.append((engine.state.step, None, self._pending))
            self._pending = {}
        try:
            self._flush(wait=True)
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
                from hookloop.commands.plot import plot_run

                files.append(plot_run(run_dir, run_dir / "metrics.png"))
            except Exception as exc:  # no matplotlib, or nothing to plot yet
                log.info(f"{self.name}_no_plot", reason=str(exc))
        save_model(engine.model, str(scratch / "model.safetensors"))
        return [*files, scratch / "model.safetensors"]
