"""Per-step cost of the tracker plugins (`mlflow`, `wandb`) on the trivial MLP of
`benchmarks/overhead.py`, against a raw PyTorch loop and the bare engine, in one process.

Variants, interleaved in rounds (raw, engine, mlflow, wandb, raw, ...), each from the same
seed over the same pre-made batches, one torch thread:

    raw      the hand-written loop
    engine   Engine(...).fit() with no plugins
    null     the engine with a tracker plugin whose tracker process does nothing: what the
             loop itself pays for a tracker (keeping references, flushing, sending)
    mlflow   the engine with the mlflow plugin alone (local sqlite store, defaults)
    wandb    the engine with the wandb plugin alone (offline, defaults)

A tracker variant starts its clocks once its run is open (a one-off of seconds, in the
tracker process) and stops them at the last step (the upload at the end is a one-off too).
Three figures per variant and round:

    cpu      CPU time of the training process per step (all its threads), from the first
             timed step to the last: what the loop pays, flush steps included; CPU time
             hardly moves when other work loads the machine, unlike wall time
    wall     median wall time of a step (flush steps are rare, so this is a plain step)
    hooks    CPU time of the training thread inside the tracker's after_step per step
             (thread CPU time: no waiting, no preemption counted), flush steps included
    tracker  CPU time of the tracker process per step: work done outside the loop

The table gives the median over rounds with min-max, and each variant's cpu against raw and
the engine.

    python benchmarks/tracker_cost.py --steps 2000 --rounds 5
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import mlp_setup, raw_loop  # noqa: E402

from hookloop import Engine, hookimpl  # noqa: E402
from hookloop.logs import configure_logging  # noqa: E402

VARIANTS = ("raw", "engine", "null", "mlflow", "wandb")


class NullBackend:
    """A tracker backend that does nothing (built in the tracker process, which finds this
    module through PYTHONPATH)."""

    def __init__(self, **options: Any) -> None:
        pass

    def open(self, run_id: str | None) -> tuple[str, dict[str, int]]:
        return "null", {}

    def log_params(self, params: dict[str, str], tags: dict[str, str]) -> None:
        pass

    def log_rows(self, rows: list[Any]) -> None:
        pass

    def finish(self, status: str, artifacts: list[Path]) -> None:
        pass


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process `pid` so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Clocks:
    """Wall and process-CPU stamps after every step (the last plugin of the step); at the
    first hook of `fit()`, waits for the tracker's run to open, so timing starts after."""

    name = "clocks"

    def __init__(self, tracker: Any = None) -> None:
        self.tracker = tracker
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.tracker_cpu: list[float] = []

    def stamp(self) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())
        if self.tracker is not None:
            self.tracker_cpu.append(process_cpu_seconds(self.tracker._link._child.proc.pid))

    @hookimpl(trylast=True)
    def on_fit_start(self) -> None:
        if self.tracker is not None:
            self.tracker._link.wait_for_run(300)
        self.stamp()

    @hookimpl(trylast=True)
    def after_step(self) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def figures(self, steps: int) -> dict[str, float]:
        """µs per step: cpu (mean), wall (median), tracker (mean)."""
        diffs = [b - a for a, b in zip(self.wall[1:], self.wall[2:], strict=False)]
        return {
            "cpu": (self.cpu[-1] - self.cpu[0]) * 1e6 / steps,
            "wall": statistics.median(diffs) * 1e6,
            "tracker": (self.tracker_cpu[-1] - self.tracker_cpu[0]) * 1e6 / steps
            if len(self.tracker_cpu) > 1
            else 0.0,
        }


class LastStep:
    """Stamps the tracker process's CPU at the last step (before fit()'s end uploads)."""

    name = "last_step"

    def __init__(self, clocks: Clocks, steps: int) -> None:
        self.clocks, self.steps = clocks, steps

    @hookimpl(trylast=True)
    def after_step(self, state: Any) -> None:
        if state.step == self.steps and self.clocks.tracker is not None:
            self.clocks.tracker_cpu.append(
                process_cpu_seconds(self.clocks.tracker._link._child.proc.pid)
            )


def run_variant(variant: str, steps: int, seed: int) -> dict[str, float]:
    model, batches, loss_fn, _ = mlp_setup(seed, steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if variant == "raw":
        clocks = Clocks()
        clocks.stamp()
        raw_loop(model, optimizer, batches, loss_fn, clocks.wall)
        clocks.cpu.append(time.process_time())
        return {**clocks.figures(steps), "hooks": 0.0}
    tracker: Any = None
    if variant == "null":
        from hookloop.plugins.mlflow import MLflow

        class Null(MLflow):
            backend_class = "tracker_cost:NullBackend"

        tracker = timed(Null)()
    elif variant == "mlflow":
        from hookloop.plugins.mlflow import MLflow

        tracker = timed(MLflow)()
    elif variant == "wandb":
        from hookloop.plugins.wandb import WandB

        tracker = timed(WandB)(mode="offline")
    clocks = Clocks(tracker)
    plugins = [p for p in (tracker, clocks, LastStep(clocks, steps)) if p is not None]
    with tempfile.TemporaryDirectory() as run_dir:
        engine = Engine(
            model, optimizer, batches, loss_fn=loss_fn, plugins=plugins, run_dir=Path(run_dir)
        )
        engine.fit(max_steps=steps)
    return {**clocks.figures(steps), "hooks": tracker.hook_ns / 1e3 / steps if tracker else 0.0}


def timed(cls: type) -> type:
    """`cls` with its `after_step` timed in thread CPU time (`hook_ns`)."""

    class Timed(cls):  # type: ignore[misc, valid-type]
        hook_ns = 0

        @hookimpl
        def after_step(self, state: Any) -> None:
            start = time.thread_time_ns()
            try:
                super().after_step(state)
            finally:
                self.hook_ns += time.thread_time_ns() - start

    return Timed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    configure_logging(stream=io.StringIO())
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")]
    )
    results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            results[variant].append(run_variant(variant, args.steps, args.seed))
    print(
        f"torch {torch.__version__}, 1 thread, MLP, {args.steps} steps x {args.rounds} "
        f"interleaved rounds; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n"
    )
    print(
        "| variant | cpu µs/step (min–max) | cpu − raw | cpu − engine | wall µs/step (min–max) "
        "| hooks cpu µs/step (min–max) | tracker process cpu µs/step |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")

    def med(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in results[variant])

    def span(variant: str, key: str) -> str:
        values = [r[key] for r in results[variant]]
        return f"{med(variant, key):.1f} ({min(values):.1f}–{max(values):.1f})"

    for v in VARIANTS:
        print(
            f"| {v} | {span(v, 'cpu')} | {med(v, 'cpu') - med('raw', 'cpu'):+.1f} "
            f"| {med(v, 'cpu') - med('engine', 'cpu'):+.1f} | {span(v, 'wall')} "
            f"| {span(v, 'hooks')} | {med(v, 'tracker'):.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
