"""Stop cleanly on SIGTERM / SIGINT / SIGUSR1: finish the step, save a checkpoint, say how to
resume, and on SLURM requeue the job.

Cluster schedulers send SIGTERM before they kill a job (SLURM sends the signal of
`#SBATCH --signal=USR1@120` that long before the time limit); Ctrl-C sends SIGINT. On the first
signal the run finishes the optimizer step in progress, stops (`state.request_stop`), saves a
checkpoint and logs the command that resumes it. A second signal exits at once with status
128 + the signal number, without saving; the checkpoints already on disk stay valid because
every save is atomic. After the clean stop, `state.exit_status` is 128 + the signal number
too, which `hookloop train` exits with (130 for SIGINT, 143 for SIGTERM, 138 for SIGUSR1), so
a retry loop or a scheduler sees a run that has not finished.

The checkpoint goes through the `checkpoint` plugin when it is enabled (same directory,
pointers and pruning, and no second copy of its end-of-fit save), else straight through
`hookloop.checkpoint.save_checkpoint`, so preemption works with `-p no:checkpoint` too.
An engine without a `run_dir` stops without saving.

Under torchrun a signal may reach one rank or all: the rank that gets it asks to stop, the
ranks agree at the end of that step, and every rank takes part in the one checkpoint rank 0
writes. With `requeue = true`, inside a SLURM job (`SLURM_JOB_ID` set), rank 0 then runs
`scontrol requeue $SLURM_JOB_ID`; the requeued job's `hookloop train --resume auto
--run-dir DIR` continues from that checkpoint.

    [plugins.preemption]
    signals = "SIGTERM,SIGINT,SIGUSR1"   # the signals handled (a comma-separated string or a list)
    requeue = false                      # inside SLURM: requeue the job after the save

Hooks: `on_fit_start` installs the handlers (only in the main thread; never at import),
`on_fit_end` / `on_exception` restore the previous ones; `on_fit_end` saves after a signal.
Cost: nothing per step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from hookloop import checkpoint as ckpt
from hookloop.errors import PluginError
from hookloop.hookspecs import hookimpl

if TYPE_CHECKING:
    from hookloop.engine import Engine
    from hookloop.state import State

__all__ = ["Preemption"]

log = structlog.get_logger(__name__)


class Preemption:
    """Turn a termination signal into a clean stop with a checkpoint."""

    name = "preemption"
    before = (
        "checkpoint",
    )  # our on_fit_end save (reason "preempted") comes first; its is then a no-op

    def __init__(
        self, *, signals: str | list[str] = "SIGTERM,SIGINT,SIGUSR1", requeue: bool = False
    ) -> None:
        if isinstance(signals, str):
            signals = [s.strip() for s in signals.split(",") if s.strip()]
        known = {s.name for s in signal.Signals}
        for name in signals:
            if name not in known or name in ("SIGKILL", "SIGSTOP"):
                raise PluginError(
                    f"preemption: option signals has {name!r}, not a catchable signal"
                )
        self.signals = [signal.Signals[name] for name in signals]
        if not isinstance(requeue, bool):
            raise PluginError(f"preemption: option requeue must be true or false, got {requeue!r}")
        self.requeue = requeue
        self.received: str | None = None
        self._previous: dict[signal.Signals, Any] = {}

    @hookimpl
    def on_fit_start(self, engine: Engine, state: State) -> None:
        self.received = None
        if threading.current_thread() is not threading.main_thread():
            log.warning("preemption_inactive", reason="fit() runs outside the main thread")
            return

        def handler(signum: int, frame: object) -> None:
            name = signal.Signals(signum).name
            if self.received is not None:
                os.write(2, f"hookloop: second {name}: aborting now\n".encode())
                os._exit(128 + signum)
            self.received = name
            state.request_stop(f"received {name}")
            # print()/logging may be mid-write in the interrupted frame: write(2) is safe.
            # Under torchrun the ranks stop together at the end of this step or the next.
            upto = f"step {state.step + 1}" + (" or the next" if engine.world_size > 1 else "")
            os.write(
                2,
                f"hookloop: received {name}: finishing {upto}, then "
                "saving a checkpoint (send it again to abort at once)\n".encode(),
            )

        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, handler)
            # Restart system calls the signal interrupts: a rank blocked in a gloo/NCCL
            # collective must not see EINTR (gloo aborts the process on it); the handler
            # only sets a flag, which the loop reads at the end of the step.
            signal.siginterrupt(sig, False)

    @hookimpl
    def on_fit_end(self, engine: Engine, state: State) -> None:
        received = self.received
        if engine.world_size > 1:
            # Every rank saves, or none does, on what the ranks gathered: a signal arriving
            # after this gather (on one rank only) must not send that rank into a save's
            # collectives alone.
            received = _any_rank(received)
        if received is None:
            self._restore()
            return
        self.received = received
        state.exit_status = 128 + signal.Signals[received]
        try:
            path = self._save(engine)  # our handler stays on: a second signal still aborts
        finally:
            self._restore()
        engine.journal.record(
            "signal_received",
            step=state.step,
            reason=f"{received}: stopped cleanly",
            signal=received,
            checkpoint=str(path) if path else None,
        )
        if not engine.is_main_process:
            return
        if self.requeue:
            _requeue(engine, state)
        if path is None:
            log.warning(
                "preempted",
                step=state.step,
                checkpoint=None,
                detail="no run directory, so nothing was saved",
            )
        else:
            log.warning(
                "preempted",
                step=state.step,
                checkpoint=str(path),
                resume=f"hookloop train --resume auto --run-dir {engine.run_dir}",
            )

    @hookimpl
    def on_exception(self) -> None:
        self._restore()

    def _save(self, engine: Engine) -> Path | None:
        loaded = engine.plugins.get("checkpoint")
        if (
            loaded is not None
            and "checkpoint" not in engine.disabled_plugins
            and hasattr(loaded.plugin, "save")
        ):
            return loaded.plugin.save(engine, reason=f"preempted by {self.received}", wait=True)
        if engine.run_dir is None:
            return None
        directory = engine.run_dir / ckpt.CHECKPOINTS_DIR / ckpt.checkpoint_name(engine.state.step)
        return ckpt.save_checkpoint(
            engine, directory, extra={"reason": f"preempted by {self.received}"}
        )

    def _restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


def _any_rank(received: str | None) -> str | None:
    """The signal any rank received (the first in rank order), the same on every rank."""
    import torch.distributed as dist

    names: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(names, received)
    return next((name for name in names if name is not None), None)


def _requeue(engine: Engine, state: State) -> None:
    """`scontrol requeue $SLURM_JOB_ID`, when inside a SLURM job."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        log.warning("requeue_skipped", reason="not inside a SLURM job (no SLURM_JOB_ID)")
        return
    try:
        done = subprocess.run(
            ["scontrol", "requeue", job], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("requeue_failed", job=job, error=str(exc))
        return
    if done.returncode != 0:
        log.warning("requeue_failed", job=job, error=done.stderr.strip() or done.returncode)
        return
    engine.journal.record("requeued", step=state.step, reason=f"scontrol requeue {job}", job=job)
    log.warning("requeued", job=job, step=state.step)
