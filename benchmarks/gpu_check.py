"""Run the CUDA paths for real: each precision, torch.compile, checkpoint and resume on a GPU.

Trains the default recipe's model through `hookloop.lm.recipe.build_run` (every default plugin
on) for a few dozen steps in each mode and prints one row per mode: loss before/after,
validation loss, steps per second, the fp16 loss scale, the clip plugin's last grad norm, and
whether a resumed run picked up where the checkpoint left off. Needs a CUDA device.

    python benchmarks/gpu_check.py --steps 60
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import torch

from hookloop import hookimpl
from hookloop.checkpoint import latest_valid_checkpoint, load_checkpoint
from hookloop.lm.config import load_config
from hookloop.lm.recipe import build_run
from hookloop.logs import configure_logging


class LastMetrics:
    """Keeps the grad norm and loss scale the step's plugins produced."""

    name = "last_metrics"

    def __init__(self) -> None:
        self.grad_norm = float("nan")
        self.first_loss: float | None = None

    @hookimpl
    def after_step(self, engine, state) -> None:
        if self.first_loss is None:
            self.first_loss = state.loss.item()
        if "grad_norm" in state.metrics:
            self.grad_norm = float(state.metrics["grad_norm"])


def check(mode: str, precision: str, compile_model: bool, steps: int, base: Path) -> str:
    overrides = [
        "training.device=cuda",
        f"training.precision={precision}",
        f"training.compile={'true' if compile_model else 'false'}",
        f"training.max_steps={steps}",
        "plugins.eval.every=0",
        "plugins.eval.max_batches=20",
    ]
    config = load_config(None, overrides)
    run_dir = base / mode
    run = build_run(config, run_dir)
    probe = LastMetrics()
    run.engine.add_plugin(probe)
    torch.cuda.synchronize()
    start = time.perf_counter()
    state = run.fit()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    val = run.engine.evaluate(max_batches=20)["val_loss"]
    scale = run.engine.scaler.get_scale() if run.engine.scaler is not None else None

    # Resume from the final checkpoint in a new run of the same directory and go 5 further.
    resumed = build_run(
        load_config(
            None, [*overrides[:-3], f"training.max_steps={steps + 5}", "plugins.eval.every=0"]
        ),
        run_dir,
    )
    load_checkpoint(resumed.engine, latest_valid_checkpoint(run_dir))
    resumed_from = resumed.engine.state.step
    resumed.fit()
    ok = resumed_from == steps and resumed.engine.state.step == steps + 5
    return (
        f"| {mode} | {probe.first_loss:.3f} → {state.loss.item():.3f} | {val:.3f} "
        f"| {steps / seconds:.1f} | {scale if scale is not None else '-'} "
        f"| {probe.grad_norm:.3f} | {'yes' if ok else 'NO'} (from step {resumed_from}) |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 1
    configure_logging(stream=io.StringIO())
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}\n")
    print(
        "| mode | train loss first → last | val loss | steps/s (incl. compile) "
        "| fp16 loss scale | last grad norm | resumed |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    modes = [
        ("fp32", "fp32", False),
        ("bf16", "bf16", False),
        ("fp16 + GradScaler", "fp16", False),
        ("bf16 + torch.compile", "bf16", True),
    ]
    with tempfile.TemporaryDirectory() as base:
        for mode, precision, compile_model in modes:
            print(check(mode, precision, compile_model, args.steps, Path(base)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
