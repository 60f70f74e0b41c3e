"""What the experiment-tracker plugins (`mlflow`, `wandb`) share.

Not a plugin: no entry point. A tracker plugin subclasses `TrackerPlugin` and supplies a
`TrackerBackend`: the few calls that talk to the tracker itself (open or resume a run, log
parameters, log rows of metrics, finish with artifacts).

**No host syncs, no waiting.** In `after_step` a logged step's values are only queued for
the host through the loggers' shared buffer (`hookloop.plugins._steplog`, as `csv` does: one
batched copy, asynchronous on a GPU). Every `flush_every` logged steps the landed rows go, as one batch, to a worker thread, which makes
every tracker call: opening the run, logging, finishing. A slow store, a down server or a
network timeout therefore never stalls a training step; only `fit()`'s end waits, at most
`timeout` seconds, for the worker to finish.

**Failures.** An error in the worker is kept and raised by the plugin in its next hook, so
the engine's policy for non-critical plugins applies: it is logged once, journaled
(`plugin_disabled`) and the plugin is unregistered; training goes on.

**Each step once.** The tracker's run id is saved in the plugin's checkpoint state, so a
resume continues the same run. On opening a resumed run the backend reports the last step
the tracker already holds for each metric (a run killed between a logged step and its
checkpoint has logged steps the resumed run trains again); rows at or below it are not sent
again. hookloop's resume is exact, so the values already there are the ones it would send.
"""

from __future__ import annotations

import queue
import subprocess
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from hookloop import PluginError, hookimpl
from hookloop.options import check_int, check_number
from hookloop.plugins._metrics import METRIC_WRITERS, to_floats
from hookloop.plugins._steplog import MAX_UNSENT, RowReader, StepLog
from hookloop.plugins._steplog import Row as StepRow

if TYPE_CHECKING:
    from hookloop import Engine, State

__all__ = ["Row", "TrackerBackend", "TrackerPlugin", "flatten_config", "run_tags"]

log = structlog.get_logger(__name__)

Row = tuple[int, dict[str, float]]
"""One logged step: `(optimizer step, {metric: value})`."""


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


class TrackerBackend:
    """The tracker calls a `TrackerPlugin` makes, all on its worker thread."""

    def open(self, run_id: str | None) -> tuple[str, dict[str, int]]:
        """Start a run, or continue `run_id` when resuming.

        Returns:
            The run id, and for each metric the last step the run already holds (the key
            `"*"` applies to every metric: for trackers whose steps only go forward).
        """
        raise NotImplementedError

    def log_params(self, params: dict[str, str], tags: dict[str, str]) -> None:
        """Record the flattened config and the tags (a resumed run may hold some already)."""
        raise NotImplementedError

    def log_rows(self, rows: list[Row]) -> None:
        """Log metric rows, each at its step, in step order."""
        raise NotImplementedError

    def finish(self, status: str, artifacts: list[Path]) -> None:
        """Upload the artifacts and end the run: status is `FINISHED`, `FAILED` or `KILLED`."""
        raise NotImplementedError


class TrackerPlugin:
    """Base of the tracker plugins: queues each logged step, ships batches to a worker."""

    name = "tracker"
    critical = False  # an optional viewer: failing must not stop training
    after = (*METRIC_WRITERS, "csv")

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
        self._worker: _Worker | None = None

    def backend(self, engine: Engine) -> TrackerBackend:
        """The backend for this run (called on the main thread, at `on_fit_start`)."""
        raise NotImplementedError

    @staticmethod
    def require(module: str, extra: str) -> Any:
        """Import the tracker's package, or raise the one-line error saying how to get it."""
        import importlib

        try:
            return importlib.import_module(module)
        except ImportError as exc:
            raise PluginError(
                f"{extra}: the {module} package is not installed; run "
                f"`pip install 'hookloop[{extra}]'` or disable the plugin (-p no:{extra})"
            ) from exc

    # --- hooks ---------------------------------------------------------------------------

    @hookimpl
    def on_fit_start(self, engine: Engine, state: State) -> None:
        self._stop_worker(wait=False)
        self._seen_step, self._pending = state.step, {}
        if not engine.is_main_process:
            return
        backend = self.backend(engine)
        params, tags = flatten_config(engine.config), run_tags(engine)
        self._worker = _Worker(backend, self._resume_id or self.run_id, params, tags, self.name)
        self.log = StepLog.of(engine)
        self.log.join(self.reader)

    @hookimpl
    def after_step(self, state: State) -> None:
        self._seen_step = state.step
        if self._worker is None or self.log is None:
            return
        self._worker.raise_error()
        row = self.log.record(state)  # no tensor work
        if state.step % self.every == 0 or self._pending:
            self._queued.append((state.step, self._pending, row))
            self._pending = {}
            if len(self._queued) >= self.flush_every or self.log.unsent >= MAX_UNSENT:
                self.log.send()  # without waiting: the rows go to the worker once landed
        if len(self._queued) >= self.flush_every:
            self._send(wait=False)

    @hookimpl
    def on_eval_end(self, state: State, metrics: dict[str, float]) -> None:
        if self._worker is None:
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
        if self._worker is None:
            return None
        self._send()
        self.run_id = self._worker.wait_for_run(self.timeout)
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
        """Hand the queued rows whose values have landed (with `wait`: all) to the worker."""
        rows: list[Row] = []
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
        if rows and self._worker is not None:
            self._worker.put(rows)

    def _finish(self, engine: Engine, status: str) -> None:
        if self._worker is None:
            return
        if self._pending and engine.state.step:
            self._queued.append((engine.state.step, self._pending, None))
            self._pending = {}
        self._send()
        with tempfile.TemporaryDirectory(prefix=f"hookloop-{self.name}-") as scratch:
            worker = self._worker
            worker.put(("finish", status, self.artifacts(engine, Path(scratch))))
            try:
                self._stop_worker(wait=True)
            finally:
                self.run_id = worker.run_id or self.run_id

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

    def _stop_worker(self, *, wait: bool) -> None:
        worker, self._worker = self._worker, None
        self._queued.clear()
        if worker is not None and wait:
            worker.close(self.timeout)
        elif worker is not None:
            worker.put(None)


class _Worker:
    """One thread that makes every tracker call in order, so the loop never waits on one."""

    def __init__(
        self,
        backend: TrackerBackend,
        run_id: str | None,
        params: dict[str, str],
        tags: dict[str, str],
        name: str,
    ) -> None:
        self.backend, self.name = backend, name
        self.run_id: str | None = None
        self.error: BaseException | None = None
        self._opened = threading.Event()
        self._reported = False
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(
            target=self._main, args=(run_id, params, tags), name=f"hookloop-{name}", daemon=True
        )
        self._thread.start()

    def put(self, item: Any) -> None:
        """Queue a list of rows, or `("finish", status, artifacts)`."""
        self._queue.put(item)

    def raise_error(self) -> None:
        """Raise the worker's error once, in the caller's thread (the plugin's hook)."""
        if self.error is not None and not self._reported:
            self._reported = True
            raise PluginError(f"{self.name}: {type(self.error).__name__}: {self.error}")

    def wait_for_run(self, timeout: float) -> str | None:
        """The run id, once the run is open (waits at most `timeout` seconds)."""
        self._opened.wait(timeout)
        self.raise_error()
        return self.run_id

    def close(self, timeout: float) -> None:
        """Stop the thread after what is queued, waiting at most `timeout` seconds.

        Raises:
            PluginError: the tracker failed, or did not finish within `timeout`.
        """
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.error = self.error or TimeoutError(
                f"the tracker did not finish within {timeout:g}s (option timeout); "
                "what it had not sent yet is lost"
            )
        self.raise_error()

    def _main(self, run_id: str | None, params: dict[str, str], tags: dict[str, str]) -> None:
        try:
            self.run_id, last = self.backend.open(run_id)
            self._opened.set()
            self.backend.log_params(params, tags)
            while (item := self._queue.get()) is not None:
                if isinstance(item, tuple):
                    self.backend.finish(item[1], item[2])
                    continue
                floor = last.get("*", -1)
                rows = [
                    (s, {k: x for k, x in v.items() if s > max(last.get(k, -1), floor)})
                    for s, v in item
                ]
                if rows := [(s, v) for s, v in rows if v]:
                    self.backend.log_rows(rows)
                    for s, v in rows:
                        last.update(dict.fromkeys(v, s))
        except BaseException as exc:  # kept, and raised by the plugin's next hook
            self.error = exc
            self._opened.set()
