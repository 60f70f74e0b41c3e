"""hookloop side by side with a raw loop, Ignite and Lightning, on the same work, in one process.

Five variants train the same model from the same seed over the same pre-made batches, with
AdamW (lr 1e-3), gradients clipped to a global L2 norm of 1.0, a linear warmup over the first
tenth of the steps then a cosine decay to 0, and one log line every 10 steps:

    raw        a hand-written loop: clip_grad_norm_, a torch LambdaLR, a logging call
    hookloop   Engine.fit() with the same three plugins: clip, schedule, console
    defaults   Engine.fit() with every default plugin (clip, schedule, console as above)
    ignite     an Ignite Engine with a process function and handlers (LRScheduler, a log
               handler every 10 iterations)
    lightning  a Lightning Trainer (gradient_clip_val, a step-interval LambdaLR, a callback
               that logs every 10 steps) with the progress bar, checkpointing, the model
               summary and the logger off

Every log line goes to an in-memory stream, so the terminal costs nothing. Each variant
stamps the time after every step (a last handler, callback or plugin); a run's figure is the
median of its step times after the first tenth (the mean, which includes periodic work such
as the log lines, is shown too). Rounds interleave the variants in one process (raw,
hookloop, defaults, ignite, lightning, raw, ...), each variant training from scratch, so
machine noise hits all of them alike; the ratio and overhead columns compare each variant
with raw *in the same round*, then take the median over rounds (min-max in brackets). After
each run the trained model's loss on the last batch is computed: all variants must agree.

Import time and time to first step need fresh processes: each variant starts
`--probe-rounds` times (interleaved too) in a subprocess that imports its framework, builds
the MLP and trains; "import" is the framework's import (torch included) and "first step" the
time from spawning the process to the end of the first optimizer step.

    python benchmarks/peers.py                                  # both models, all variants
    python benchmarks/peers.py --model mlp --steps 2000 --rounds 7
    python benchmarks/peers.py --clock cpu       # the thread's CPU time: on a loaded machine
    python benchmarks/peers.py --variants raw,hookloop,defaults  # without the bench extra

Ignite and Lightning come from the `bench` extra: `pip install -e ".[bench]"`.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Only the standard library at the top: a probe process times the framework's own import.

VARIANTS = ("raw", "hookloop", "defaults", "ignite", "lightning")
PEERS = {"ignite": "ignite.engine", "lightning": "lightning"}
"""The variants that need the `bench` extra, and the module each imports."""
IMPORTS = {
    "raw": ("torch",),
    "hookloop": ("torch", "hookloop"),
    "defaults": ("torch", "hookloop"),
    "ignite": ("torch", "ignite.engine", "ignite.handlers"),
    "lightning": ("torch", "lightning"),
}
"""What a user's script imports to use each variant: timed by the probes."""
PEAK_LR = 1e-3
MAX_NORM = 1.0
LOG_EVERY = 10
MODELS = {"mlp": 2000, "transformer": 100}
"""The models and their default steps per round."""
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
CLOCK = CLOCKS["wall"]
"""What stamps the steps: `--clock cpu` counts the training thread's CPU time, which the load
of other processes disturbs much less than the wall clock (on a 2-core machine with a load
of 8, a 0.2 ms step takes 2-20 ms of wall time)."""

LOG = logging.getLogger("peers")
LOG.propagate = False
LOG.setLevel(logging.INFO)
LOG.addHandler(logging.StreamHandler(io.StringIO()))


@dataclass
class Work:
    """One variant's run: a fresh model, the pre-made batches and the step stamps."""

    model: Any
    batches: list[Any]
    loss_fn: Callable[[Any, Any], Any]
    stamps: list[float] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.batches)

    @property
    def warmup(self) -> int:
        return max(1, self.steps // 10)

    def lr_factor(self, done: int) -> float:
        """The fraction of the peak lr for the update after `done` updates (a LambdaLR
        function): the curve of hookloop's schedule plugin (cosine, min_lr 0)."""
        k = done + 1
        if k <= self.warmup:
            return k / self.warmup
        if k >= self.steps:
            return 0.0
        return 0.5 * (1 + math.cos(math.pi * (k - self.warmup) / (self.steps - self.warmup)))

    def stamp(self, *_: Any) -> None:
        self.stamps.append(CLOCK())


def make_work(
    model: str,
    seed: int,
    steps: int,
    *,
    seq_len: int = 64,
    width: int = 128,
    layers: int = 4,
    batch: int = 12,
) -> Work:
    """The model of `model` from `seed` and `steps` batches: `mlp` is a two-layer MLP on 4x8
    inputs (a step well under a millisecond, so framework cost shows), `transformer` the
    recipe's TinyTransformerLM (by default 4 layers, d_model 128, context 64, batch 12, vocab
    65: the models of benchmarks/overhead.py; d_ff is 4 x width, 4 heads)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    if model == "mlp":
        net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8))
        batches = [
            (torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)) for _ in range(steps)
        ]
        return Work(net, batches, lambda m, b: F.mse_loss(m(b[0]), b[1]))
    from hookloop.lm.model import TinyTransformerLM
    from hookloop.losses import next_token_loss

    net = TinyTransformerLM(
        65,
        d_model=width,
        n_heads=4,
        n_layers=layers,
        d_ff=4 * width,
        max_seq_len=seq_len,
        dropout=0.0,
    )
    tokens = torch.randint(0, 65, (steps, batch, seq_len + 1), generator=g)
    return Work(
        net, [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in tokens], next_token_loss
    )


def log_line(step: int, loss: float, lr: float) -> None:
    LOG.info("step=%d loss=%.4f lr=%.3e", step, loss, lr)


def run_raw(work: Work, run_dir: Path) -> None:
    import torch

    model = work.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=PEAK_LR)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, work.lr_factor)
    params = list(model.parameters())
    model.train()
    work.stamp()
    for step, batch in enumerate(work.batches, 1):
        loss = work.loss_fn(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % LOG_EVERY == 0:
            log_line(step, loss.item(), optimizer.param_groups[0]["lr"])
        work.stamp()


def run_hookloop(work: Work, run_dir: Path, every_default: bool = False) -> None:
    import torch

    from hookloop import Engine, hookimpl
    from hookloop.loading import DEFAULT_PLUGINS, load_plugins
    from hookloop.logs import configure_logging

    configure_logging(stream=io.StringIO())  # the console plugin's lines, like the others'

    class Stamp:
        name = "stamp"

        @hookimpl(trylast=True)  # the step including every other plugin's after_step
        def after_step(self) -> None:
            work.stamp()

    options = {
        "clip": {"max_norm": MAX_NORM},
        "schedule": {"kind": "cosine", "warmup_steps": work.warmup},
        "console": {"every": LOG_EVERY},
    }
    plugins = load_plugins(options, enable=DEFAULT_PLUGINS if every_default else ())
    engine = Engine(
        work.model,
        torch.optim.AdamW(work.model.parameters(), lr=PEAK_LR),
        work.batches,
        loss_fn=work.loss_fn,
        val_data=work.batches[:4] if every_default else None,
        plugins=[*plugins, Stamp()],
        run_dir=run_dir,
    )
    work.stamp()
    engine.fit(max_steps=work.steps)


def run_defaults(work: Work, run_dir: Path) -> None:
    run_hookloop(work, run_dir, every_default=True)


def run_ignite(work: Work, run_dir: Path) -> None:
    import torch
    from ignite.engine import Engine, Events
    from ignite.handlers import LRScheduler

    model = work.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=PEAK_LR)
    params = list(model.parameters())

    def train_step(engine: Engine, batch: Any) -> torch.Tensor:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = work.loss_fn(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
        optimizer.step()
        return loss.detach()  # a tensor: read on the logging iterations only, like the others

    def log(engine: Engine) -> None:
        log_line(
            engine.state.iteration, engine.state.output.item(), optimizer.param_groups[0]["lr"]
        )

    trainer = Engine(train_step)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, work.lr_factor)
    trainer.add_event_handler(Events.ITERATION_STARTED, LRScheduler(schedule))
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=LOG_EVERY), log)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, work.stamp)
    logging.getLogger("ignite").setLevel(logging.WARNING)
    work.stamp()
    trainer.run(work.batches, max_epochs=1)


def run_lightning(work: Work, run_dir: Path) -> None:
    import lightning as L
    import torch

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = work.model

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return work.loss_fn(self.net, batch)

        def configure_optimizers(self) -> dict[str, Any]:
            optimizer = torch.optim.AdamW(self.net.parameters(), lr=PEAK_LR)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, work.lr_factor)
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule, "interval": "step"},
            }

    class Log(L.Callback):
        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, *_: Any) -> None:
            if trainer.global_step % LOG_EVERY == 0:
                lr = trainer.optimizers[0].param_groups[0]["lr"]
                log_line(trainer.global_step, outputs["loss"].item(), lr)

    class Stamp(L.Callback):
        def on_train_batch_end(self, *_: Any) -> None:
            work.stamp()

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=work.steps,
        gradient_clip_val=MAX_NORM,
        gradient_clip_algorithm="norm",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=run_dir,
        callbacks=[Log(), Stamp()],
    )
    work.stamp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no workers", "a list is not a DataLoader", ...
        trainer.fit(Module(), train_dataloaders=Batches(work.batches))


class Batches:
    """The pre-made batches as one iterable: Lightning takes a bare list for a list of loaders."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches

    def __iter__(self) -> Any:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


RUNS: dict[str, Callable[[Work, Path], None]] = {
    "raw": run_raw,
    "hookloop": run_hookloop,
    "defaults": run_defaults,
    "ignite": run_ignite,
    "lightning": run_lightning,
}


def train(
    variant: str, model: str, seed: int, steps: int, **shape: int
) -> tuple[list[float], float]:
    """One run of `variant` on `make_work(model, seed, steps, **shape)`: its step times in
    seconds and the trained model's loss on the last batch."""
    import torch

    work = make_work(model, seed, steps, **shape)
    with tempfile.TemporaryDirectory(prefix="hookloop-peers-") as run_dir:
        RUNS[variant](work, Path(run_dir))
    if len(work.stamps) != steps + 1:
        raise RuntimeError(f"{variant} stamped {len(work.stamps) - 1} steps, not {steps}")
    with torch.no_grad():
        loss = float(work.loss_fn(work.model, work.batches[-1]))
    return [b - a for a, b in zip(work.stamps, work.stamps[1:], strict=False)], loss


def spread(values: list[float], fmt: str) -> str:
    """`median (min–max)` of `values`, each formatted with `fmt`."""
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def bench(model: str, variants: tuple[str, ...], steps: int, rounds: int, seed: int) -> list[str]:
    """The interleaved rounds on `model`, as the lines of a markdown table."""
    median: dict[str, list[float]] = {v: [] for v in variants}
    mean: dict[str, list[float]] = {v: [] for v in variants}
    losses: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for variant in variants:
            times, loss = train(variant, model, seed, steps)
            median[variant].append(statistics.median(times[steps // 10 :]) * 1e6)
            mean[variant].append(statistics.fmean(times[steps // 10 :]) * 1e6)
            losses[variant].append(loss)
    raw = median["raw"]
    rows = [
        f"\n### {model}: {steps} steps x {rounds} interleaved rounds\n",
        "| variant | µs/step, median (min–max) | mean µs/step | over raw, µs/step "
        "| ratio to raw | final loss |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for v in variants:
        over = [m - r for m, r in zip(median[v], raw, strict=True)]
        ratio = [m / r for m, r in zip(median[v], raw, strict=True)]
        rows.append(
            f"| {v} | {spread(median[v], '.1f')} | {statistics.median(mean[v]):.1f} "
            f"| {spread(over, '+.1f')} | {spread(ratio, '.3f')} | {losses[v][0]:.6f} |"
        )
    every = [loss for v in variants for loss in losses[v]]
    gap = max(abs(loss - losses["raw"][0]) for loss in every)
    rows.append(
        f"\nFinal loss on the last batch: every variant and round within {gap:.1e} of raw's "
        f"{losses['raw'][0]:.6f} (relative {gap / abs(losses['raw'][0]):.1e})."
    )
    return rows


def probe(variant: str, spawned: float) -> None:
    """In a fresh process: import `variant`'s framework, train the MLP a few steps, and
    print the import time and the time from `spawned` to the end of the first step."""
    start = time.perf_counter()
    for module in IMPORTS[variant]:
        importlib.import_module(module)
    imported = time.perf_counter()
    import torch

    torch.set_num_threads(1)
    work = make_work("mlp", 0, LOG_EVERY)
    with tempfile.TemporaryDirectory(prefix="hookloop-peers-") as run_dir:
        RUNS[variant](work, Path(run_dir))
    first_step = time.time() - (CLOCK() - work.stamps[1])  # CLOCK is the wall clock here
    print(json.dumps({"import": imported - start, "first_step": first_step - spawned}))


def startup(variants: tuple[str, ...], rounds: int) -> list[str]:
    """Import time and time to first step of each variant, in fresh processes."""
    seconds: dict[str, dict[str, list[float]]] = {
        v: {"import": [], "first_step": []} for v in variants
    }
    for _ in range(rounds):
        for variant in variants:
            spawned = time.time()
            out = subprocess.run(
                [sys.executable, __file__, "--probe", variant, "--spawned", repr(spawned)],
                capture_output=True,
                text=True,
                timeout=600,
            )
            if out.returncode != 0:
                raise RuntimeError(f"the {variant} probe failed:\n{out.stderr[-3000:]}")
            for key, value in json.loads(out.stdout.strip().splitlines()[-1]).items():
                seconds[variant][key].append(value)
    rows = [
        f"\n### Start-up: {rounds} fresh processes per variant, interleaved\n",
        "| variant | import s, median (min–max) | spawn to end of first step s, median (min–max) |",
        "| --- | --- | --- |",
    ]
    for v in variants:
        rows.append(
            f"| {v} | {spread(seconds[v]['import'], '.2f')} | {spread(seconds[v]['first_step'], '.2f')} |"
        )
    return rows


def missing_peers(variants: tuple[str, ...]) -> list[str]:
    """The peer frameworks among `variants` that cannot be imported."""
    missing = []
    for v in variants:
        if v in PEERS:
            try:
                importlib.import_module(PEERS[v])
            except ImportError:
                missing.append(v)
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=(*MODELS, "both"), default="both")
    parser.add_argument("--steps", type=int, default=0, help="steps per round (default per model)")
    parser.add_argument("--rounds", type=int, default=5, help="0: start-up figures only")
    parser.add_argument("--probe-rounds", type=int, default=5, help="fresh processes per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=CLOCKS, default="wall", help="what stamps the steps")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, raw first")
    parser.add_argument("--probe", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--spawned", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        probe(args.probe, args.spawned)
        return 0
    variants = tuple(args.variants.split(","))
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or variants[0] != "raw":
        parser.error(f"--variants must start with raw and name only {', '.join(VARIANTS)}")
    missing = missing_peers(variants)
    if missing:
        print(
            f"peers.py: {' and '.join(missing)} not installed: pip install -e '.[bench]' "
            f"(or leave them out of --variants)",
            file=sys.stderr,
        )
        return 2
    import torch

    global CLOCK
    CLOCK = CLOCKS[args.clock]
    torch.set_num_threads(1)
    versions = [f"torch {torch.__version__}"]
    versions += [f"{v} {importlib.import_module(v).__version__}" for v in variants if v in PEERS]
    print(
        f"{', '.join(versions)}; {torch.get_num_threads()} torch thread; {args.clock} clock; load average {os.getloadavg()[0]:.1f}"
    )
    for model in (MODELS if args.model == "both" else (args.model,)) if args.rounds else ():
        for row in bench(model, variants, args.steps or MODELS[model], args.rounds, args.seed):
            print(row, flush=True)
    if args.probe_rounds:
        for row in startup(variants, args.probe_rounds):
            print(row, flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
