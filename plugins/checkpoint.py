"""Save checkpoints on a schedule, keep the last few and the best, and save on the way out.

Checkpoints go to `run_dir/checkpoints/step-<N>/` in the format of `hookloop.checkpoint`
(atomic: a crash at any instant leaves the previous checkpoint loadable); `latest` names the
newest, `best` the one with the best watched metric. Only rank 0 writes; under several
ranks every rank takes part in each save (the tensors are gathered to rank 0 as whole,
unsharded tensors) at the same step. An engine without a
`run_dir` saves nothing (a `checkpoint_off` warning says so once).

    [plugins.checkpoint]
    every = 1000              # save every N optimizer steps (0: never on a step count)
    every_minutes = 0.0       # also save when this many minutes passed since the last save
    keep_last = 3             # keep the newest K checkpoints (0: keep all); `best` is never pruned
    monitor = "val_loss"      # metric from on_eval_end that `best` tracks ("" turns it off)
    mode = "min"              # "min" or "max"
    save_on_end = true        # save when fit() ends (also after a stop request)
    save_on_exception = true  # save when fit() raises, if every parameter is still finite
    background = false        # copy tensors to CPU, then write on a thread
    checksum = "crc32"        # checksum of each tensor file: "crc32" (fast) or "sha256"

`every_steps`, the option's old name, still works and logs a deprecation warning.

Hooks: `on_fit_start`, `after_step` and `on_epoch_end` (trylast), `on_eval_end`,
`on_fit_end`, `on_exception`, `on_save_checkpoint` / `on_load_checkpoint`.
Cost: a modulo and a clock read per step; a save costs what writing the tensors costs
(with `background`, only the copy to CPU stalls the loop; `checkpoint_saved` records it).
A background save keeps its CPU copy after the write (one copy of the model and optimizer
state in host memory) and copies the next save into it, which costs a fraction of copying
into new memory.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import torch

from hookloop import checkpoint as ckpt
from hookloop.checkpoint.atomic import remove_dir, replace_file
from hookloop.distributed import broadcast_object, is_sharded
from hookloop.hookspecs import hookimpl
from hookloop.logs import debug
from hookloop.options import check_choice, check_int, check_number

if TYPE_CHECKING:
    from hookloop.engine import Engine
    from hookloop.state import State

__all__ = ["Checkpoint"]

log = structlog.get_logger(__name__)


class Checkpoint:
    """Periodic, best, final and emergency checkpoints with keep-last-K pruning."""

    name = "checkpoint"

    def __init__(
        self,
        *,
        every: int = 1000,
        every_minutes: float = 0.0,
        keep_last: int = 3,
        monitor: str = "val_loss",
        mode: str = "min",
        save_on_end: bool = True,
        save_on_exception: bool = True,
        background: bool = False,
        checksum: str = ckpt.DEFAULT_CHECKSUM,
        every_steps: int | None = None,
    ) -> None:
        if every_steps is not None:
            log.warning(
                "deprecated_option",
                plugin=self.name,
                option="every_steps",
                use="every",
                message="checkpoint: every_steps is deprecated; rename it to every",
            )
            every = every_steps
        check_int(self.name, "every" if every_steps is None else "every_steps", every, minimum=0)
        check_int(self.name, "keep_last", keep_last, minimum=0)
        check_number(self.name, "every_minutes", every_minutes, low=0)
        check_choice(self.name, "mode", mode, ("min", "max"))
        check_choice(self.name, "checksum", checksum, tuple(ckpt.CHECKSUMS))
        self.every, self.every_minutes, self.keep_last = every, every_minutes, keep_last
        self.monitor, self.mode = monitor, mode
        self.save_on_end, self.save_on_exception = save_on_end, save_on_exception
        self.background, self.checksum = background, checksum
        # Persisted: the checkpoints this run wrote and has not pruned (oldest first), the
        # best one and its value.
        self.written: list[str] = []
        self.best: str | None = None
        self.best_value: float | None = None
        self._pending_best: tuple[int, float] | None = None  # (step, value) awaiting a save
        self._last_saved_counters: tuple[int, ...] | None = None  # of the last save
        self._boundary_counters: dict[str, int] = {}  # at the last step boundary
        self._last_save_time = time.monotonic()
        self._said_off = False  # the no-run_dir warning is given once
        self._thread: threading.Thread | None = None
        self._thread_result: tuple[Engine, Path, dict, float] | BaseException | None = None
        # The last background save's CPU tensors, once written: reused by the next one.
        self._spare: ckpt.Snapshot | None = None
        self._deleting: list[threading.Thread] = []  # pruned checkpoints being deleted

    # --- hooks -----------------------------------------------------------------------

    @hookimpl
    def on_fit_start(self, engine: Engine, state: State) -> None:
        self._last_save_time = time.monotonic()
        self._boundary_counters = state.counters()
        if engine.run_dir is None and engine.is_main_process and not self._said_off:
            self._said_off = True
            log.warning(
                "checkpoint_off", reason="the engine has no run_dir; no checkpoint is written"
            )

    @hookimpl(trylast=True)  # after every other plugin has updated the state it saves
    def after_step(self, engine: Engine, state: State) -> None:
        self._boundary_counters = state.counters()
        if self._thread is not None and not self._thread.is_alive():
            self._collect_background_save(engine)
        due = bool(self.every and state.step % self.every == 0)
        if not due and self.every_minutes:
            due = time.monotonic() - self._last_save_time >= 60.0 * self.every_minutes
            due = broadcast_object(due)  # rank 0's clock decides for every rank
        if due or self._best_due(state):
            self.save(engine, reason="periodic" if due else "best")

    @hookimpl(trylast=True)  # same reason as after_step
    def on_epoch_end(self, engine: Engine, state: State) -> None:
        self._boundary_counters = state.counters()
        if self._best_due(state):
            self.save(engine, reason="best")

    @hookimpl
    def on_eval_end(self, state: State, metrics: dict[str, float]) -> None:
        value = metrics.get(self.monitor) if self.monitor else None
        if value is None or not math.isfinite(float(value)):
            return
        value = float(value)
        if self.best_value is None or (
            value < self.best_value if self.mode == "min" else value > self.best_value
        ):
            self._pending_best = (state.step, value)

    @hookimpl
    def on_fit_end(self, engine: Engine) -> None:
        if self.save_on_end:
            self.save(engine, reason="end")
        self.wait(engine)

    @hookimpl
    def on_exception(self, engine: Engine, state: State, error: BaseException) -> None:
        self.wait(engine)
        if not self.save_on_exception or not engine.is_main_process or engine.run_dir is None:
            return
        if getattr(error, "checkpoint", None):
            return  # the plugin that raised has saved the right state already (nan_guard)
        if state.step == 0:
            return  # nothing trained yet (e.g. a plugin refused its options at fit start)
        if engine.world_size > 1 and is_sharded(engine.model):
            # The other ranks may be anywhere: no gathering now. The last save stands.
            log.warning("checkpoint_skipped", reason="sharded model, ranks not in step")
            return
        if not all(bool(torch.isfinite(p).all()) for p in engine.model.parameters()):
            log.warning("checkpoint_skipped", reason="parameters are not finite", step=state.step)
            return
        counters = state.counters()
        # Raised between micro-batches: the data position is mid-step, the weights are not.
        mid_step = counters != self._boundary_counters and counters[
            "step"
        ] == self._boundary_counters.get("step")
        # Mid-step, or rank 0 alone under several ranks: not exact (see `inexact_reason`).
        # Such a save is kept for inspection under its own name, never as `step-N`, which a
        # resumed run writes again when it gets there.
        inexact = mid_step or engine.world_size > 1
        self.save(
            engine,
            reason=f"exception: {type(error).__name__}",
            counters=self._boundary_counters if mid_step else None,
            wait=True,
            local=True,
            prefix="emergency-" if inexact else "",
        )

    @hookimpl
    def on_save_checkpoint(self) -> dict[str, Any]:
        # "saved" is the key checkpoints have always stored `written` under.
        return {"saved": list(self.written), "best": self.best, "best_value": self.best_value}

    @hookimpl
    def on_load_checkpoint(self, state: State, saved: dict[str, Any]) -> None:
        self.written, self.best = list(saved["saved"]), saved["best"]
        self.best_value = saved["best_value"]
        self._last_saved_counters = tuple(state.counters().values())

    # --- saving ----------------------------------------------------------------------

    def save(
        self,
        engine: Engine,
        *,
        reason: str,
        counters: dict[str, int] | None = None,
        wait: bool = False,
        local: bool = False,
        prefix: str = "",
    ) -> Path | None:
        """Save a checkpoint of the current state now, unless this state is already saved.

        Args:
            engine: The engine to save.
            reason: Why, for the journal (`periodic`, `best`, `end`, `preempted`, ...).
            counters: Counters to record instead of the state's (see `snapshot`).
            wait: Return only once the checkpoint is on disk, even in background mode.
            local: Rank 0 saves alone, with no collective call (after an error, when the
                other ranks may be anywhere); otherwise every rank must call this together.
            prefix: Put before the directory's `step-N` name (`emergency-`).

        Returns:
            The checkpoint directory, or None on a non-zero rank or without a run_dir.
        """
        state = engine.state
        main = engine.is_main_process
        if engine.run_dir is None or not (main or (engine.world_size > 1 and not local)):
            return None
        directory = (
            engine.run_dir
            / ckpt.CHECKPOINTS_DIR
            / (prefix + ckpt.checkpoint_name((counters or state.counters())["step"]))
        )
        key = tuple((counters or state.counters()).values())
        if key == self._last_saved_counters:
            if self._best_due(state):  # that state is on disk already: only name it best
                self.wait(engine, deletions=False)
                if main and directory.is_dir():
                    self._mark_best(engine, directory)
            return directory if main else None
        self.wait(engine, deletions=False)
        is_best = self._best_due(state)
        if is_best:
            self.best, self.best_value = directory.name, self._pending_best[1]
            self._pending_best = None
        if directory.name in self.written:
            self.written.remove(directory.name)
        self.written.append(directory.name)
        self._last_save_time = time.monotonic()
        start = time.perf_counter()
        copy = self.background and not wait
        spare, self._spare = (self._spare, None) if copy else (None, self._spare)
        snap = ckpt.snapshot(
            engine, extra={"reason": reason}, counters=counters, copy=copy, local=local, reuse=spare
        )
        if not main:  # rank 0 writes what every rank helped gather
            self._last_saved_counters = key
            return None
        info = {"reason": reason, "best": is_best, "step": key[0]}
        if self.background and not wait:
            self._last_saved_counters = key  # in flight; forgotten again if the write fails
            self._thread = threading.Thread(
                target=self._write_in_thread,
                args=(engine, snap, directory, info, start),
                name="hookloop-checkpoint",
                daemon=True,
            )
            self._thread.start()
            debug(
                log,
                "checkpoint_started",
                path=str(directory),
                stall_ms=round(1000 * (time.perf_counter() - start), 3),
            )
            return directory
        ckpt.write_snapshot(snap, directory, checksum=self.checksum)
        self._last_saved_counters = key
        self._record_written(engine, directory, info, time.perf_counter() - start)
        return directory

    def _write_in_thread(
        self, engine: Engine, snap: ckpt.Snapshot, directory: Path, info: dict, start: float
    ) -> None:
        stall = time.perf_counter() - start
        try:
            ckpt.write_snapshot(snap, directory, checksum=self.checksum)
            self._thread_result = (
                engine,
                directory,
                {**info, "stall_ms": 1000 * stall},
                time.perf_counter() - start,
            )
        except BaseException as exc:  # re-raised in the training thread by _collect_background_save
            self._thread_result = exc
        finally:
            self._spare = snap  # the next background save copies into these buffers

    def wait(self, engine: Engine, *, deletions: bool = True) -> None:
        """Wait for a background save in flight, then record it (re-raising its error), and
        (with `deletions`) for the deletion of pruned checkpoints."""
        if self._thread is not None:
            self._thread.join()
            self._collect_background_save(engine)
        while deletions and self._deleting:
            self._deleting.pop().join()

    def _collect_background_save(self, engine: Engine) -> None:
        """Record the finished background write, or re-raise its error here."""
        result, self._thread, self._thread_result = self._thread_result, None, None
        if isinstance(result, BaseException):
            self._last_saved_counters = None
            raise result
        if result is not None:
            self._record_written(*result)

    def _record_written(self, engine: Engine, directory: Path, info: dict, seconds: float) -> None:
        """A checkpoint is on disk: point `best` at it if it is, journal it, prune."""
        if info.pop("best"):
            ckpt.write_pointer(directory.parent, ckpt.BEST, directory.name)
        engine.journal.record(
            "checkpoint_saved",
            step=info.pop("step"),
            reason=info.pop("reason"),
            path=str(directory),
            seconds=round(seconds, 4),
            best=self.best == directory.name,
            **{k: round(v, 3) for k, v in info.items()},
        )
        self._prune(engine, directory.parent)

    def _mark_best(self, engine: Engine, directory: Path) -> None:
        """Name an already saved checkpoint the best one, without writing it again: its
        state.json gets this plugin's new `best` fields and the `best` pointer moves."""
        self.best, self.best_value = directory.name, self._pending_best[1]
        self._pending_best = None
        state_file = directory / ckpt.STATE_FILE
        saved = json.loads(state_file.read_text(encoding="utf-8"))
        saved.setdefault("plugins", {})[self.name] = self.on_save_checkpoint()
        replace_file(state_file, json.dumps(saved, indent=1, default=str).encode())
        ckpt.write_pointer(directory.parent, ckpt.BEST, directory.name)
        engine.journal.record(
            "checkpoint_best", step=engine.state.step, reason=self.monitor, path=str(directory)
        )

    def _best_due(self, state: State) -> bool:
        return self._pending_best is not None and self._pending_best[0] == state.step

    def _prune(self, engine: Engine, checkpoints: Path) -> None:
        if not self.keep_last:
            return
        keep = set(self.written[-self.keep_last :]) | {self.best}
        for name in [n for n in self.written if n not in keep]:
            self.written.remove(name)
            if not (checkpoints / name).is_dir():  # pruned by an earlier launch already
                continue
            deleting = remove_dir(checkpoints / name, wait=not self.background)
            if deleting is not None:  # background: the loop does not wait for the disk
                self._deleting = [t for t in self._deleting if t.is_alive()] + [deleting]
            engine.journal.record(
                "checkpoint_pruned",
                step=engine.state.step,
                reason=f"keep_last={self.keep_last}",
                path=str(checkpoints / name),
            )
