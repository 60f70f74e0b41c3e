"""Per-step cost of the Engine against a hand-written PyTorch loop, on the same work.

Three variants run the same model from the same seed over the same pre-made batches:

    raw       for batch: loss = loss_fn(model, batch); backward; step; zero_grad
    engine    Engine(...).fit() with no plugins
    defaults  Engine(...).fit() with the default built-in plugins (whatever is installed)
    mlflow    Engine(...).fit() with the mlflow tracker alone (local sqlite store), on request
    wandb     Engine(...).fit() with the wandb tracker alone (offline), on request
    +NAME     Engine(...).fit() with the default plugin NAME alone (`--per-plugin`: each one)

With `--ref REF` (a commit, e.g. main) every engine variant also runs as `VARIANT@REF`: the
engine and plugins of that commit (extracted as in `benchmarks/engine_versions.py`),
interleaved in the same rounds, so "before" and "after" see the same machine. `--fused`
gives every variant (raw included) `AdamW(fused=True)`, the optimizer that lets the guards
skip a bad update on the device instead of reading the step on the host.

A tracker variant starts timing once its run is open (opening it is a one-off of seconds, on
the tracker's thread) and stops at the last step (the upload at the end is a one-off too).

Each variant records a timestamp after every optimizer step; the per-step time of a round is
the median of the differences (so a rare checkpoint write does not hide the steady state) and
the mean is shown too. Rounds interleave the variants (raw, engine, defaults, raw, ...) so
machine noise hits all of them alike; the table gives the median over rounds with min-max.

    python benchmarks/overhead.py                   # both models
    python benchmarks/overhead.py --model mlp --steps 2000 --rounds 7
    python benchmarks/overhead.py --model mlp --variants raw,engine,mlflow,wandb
    python benchmarks/overhead.py --model transformer --device cuda
    python benchmarks/overhead.py --model mlp --per-plugin --ref main --rounds 7

On CUDA the steps run asynchronously, so per-step timestamps say little: there the time of a
round is the whole loop, from a synchronize before the first step to one after the last,
divided by the steps (the "mean" column), after one discarded warm-up round.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hookloop import Engine, hookimpl
from hookloop.loading import DEFAULT_PLUGINS, discover, load_plugins
from hookloop.logs import configure_logging


class Clock:
    """Records the time at the end of every step (runs after every other plugin)."""

    name = "clock"

    def __init__(self, stamps: list[float]) -> None:
        self.stamps = stamps

    @hookimpl(trylast=True)  # time the step including every other plugin's after_step
    def after_step(self) -> None:
        self.stamps.append(time.perf_counter())


DEVICE = torch.device("cpu")


def mlp_setup(seed: int, steps: int) -> tuple[torch.nn.Module, list[Any], Callable, None]:
    """A two-layer MLP on 4x8 inputs: a step well under a millisecond."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8))
    g = torch.Generator().manual_seed(seed)
    batches = [
        (torch.randn(4, 8, generator=g).to(DEVICE), torch.randn(4, 8, generator=g).to(DEVICE))
        for _ in range(steps)
    ]
    return model.to(DEVICE), batches, lambda m, b: F.mse_loss(m(b[0]), b[1]), None


def transformer_setup(seed: int, steps: int) -> tuple[torch.nn.Module, list[Any], Callable, int]:
    """hookloop's TinyTransformerLM (4 layers, d_model 128, context 64, batch 12, vocab 65)."""
    from hookloop.lm.model import TinyTransformerLM
    from hookloop.losses import next_token_loss

    torch.manual_seed(seed)
    vocab = 65
    model = TinyTransformerLM(
        vocab_size=vocab, d_model=128, n_heads=4, n_layers=4, d_ff=512, max_seq_len=64, dropout=0.0
    )
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (steps, 12, 65), generator=g).to(DEVICE)
    batches = [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in tokens]
    return model.to(DEVICE), batches, next_token_loss, vocab


def raw_loop(model, optimizer, batches, loss_fn, stamps: list[float]) -> None:
    model.train()
    for batch in batches:
        loss = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())


PLUGIN_COSTS: dict[str, list[float]] = {}
TRACKERS = ("mlflow", "wandb")


class TrackerOpen:
    """Waits at the start of fit() until the tracker's run is open, then restarts the clock;
    at the last step, records the seconds spent inside the tracker's hooks since then."""

    name = "tracker_open"

    def __init__(self, tracker: Any, stamps: list[float]) -> None:
        self.tracker, self.stamps = tracker, stamps
        self.engine: Any = None
        self.start = 0.0

    @hookimpl(trylast=True)
    def on_fit_start(self, engine: Engine) -> None:
        self.tracker._worker.wait_for_run(120)
        self.engine, self.start = engine, self.seconds(engine)
        self.stamps[0] = time.perf_counter()

    @hookimpl(trylast=True)
    def after_step(self, state: Any) -> None:
        if state.step == self.engine.max_steps:
            us = (self.seconds(self.engine) - self.start) * 1e6 / state.step
            PLUGIN_COSTS.setdefault(self.tracker.name, []).append(us)

    def seconds(self, engine: Engine) -> float:
        return engine.hooks.seconds_by_plugin().get(self.tracker.name, 0.0)


def tracker_plugins(variant: str, stamps: list[float]) -> list[Any]:
    """The tracker of a tracker variant, with its defaults, and the plugin that waits for it."""
    import os

    os.environ.setdefault("WANDB_SILENT", "true")
    if variant == "mlflow":
        from hookloop.plugins.mlflow import MLflow

        tracker: Any = MLflow()
    else:
        from hookloop.plugins.wandb import WandB

        tracker = WandB(mode="offline")
    return [tracker, TrackerOpen(tracker, stamps)]


FUSED = False
REF: Any = None  # the hookloop_ref package of --ref


def default_plugins(names: list[str] | None, ref: bool) -> list[Any]:
    """The built-in default plugins (or those `names`) with their default options, of this
    tree or of the --ref commit; third-party plugins that autoload are left out."""
    if not ref:
        extra = [name for name, info in discover().items() if not info.builtin]
        return load_plugins(enable=names or DEFAULT_PLUGINS, disable=extra)
    import importlib
    from importlib.metadata import entry_points

    targets = {ep.name: ep.value for ep in entry_points(group="hookloop")}
    plugins = []
    for name in names or importlib.import_module(f"{REF.__name__}.loading").DEFAULT_PLUGINS:
        module, cls = targets[name].split(":")
        module = module.replace("hookloop", REF.__name__, 1)
        plugins.append(getattr(importlib.import_module(module), cls)())
    return plugins


def run_variant(variant: str, setup: Callable, steps: int, seed: int) -> list[float]:
    model, batches, loss_fn, _ = setup(seed, steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=FUSED or None)
    synchronize()
    stamps: list[float] = [time.perf_counter()]
    if variant == "raw":
        raw_loop(model, optimizer, batches, loss_fn, stamps)
        synchronize()
        stamps[-1] = time.perf_counter()
        return stamps
    base, _, ref = variant.partition("@")
    with tempfile.TemporaryDirectory() as run_dir:
        plugins: list[Any] = [Clock(stamps)]
        if base == "defaults":
            plugins += default_plugins(None, bool(ref))
        elif base.startswith("+"):
            plugins += default_plugins([base[1:]], bool(ref))
        elif variant in TRACKERS:
            plugins += tracker_plugins(variant, stamps)
        engine = (REF.Engine if ref else Engine)(
            model,
            optimizer,
            batches,
            loss_fn=loss_fn,
            val_data=batches[:4],
            plugins=plugins,
            run_dir=Path(run_dir),
        )
        synchronize()
        stamps[0] = time.perf_counter()
        engine.fit(max_steps=steps)
        synchronize()
        if variant not in TRACKERS:  # a tracker's upload at the end is not a step's cost
            stamps[-1] = time.perf_counter()
        if base == "defaults" and not ref:
            for name, ms in engine.plugin_costs().items():
                PLUGIN_COSTS.setdefault(name, []).append(ms * 1000)
    return stamps


def import_ref(ref: str) -> Any:
    """The engine and plugins of commit `ref`, importable as `hookloop_ref`."""
    import atexit
    import importlib

    from engine_versions import extract_ref

    tmp = tempfile.mkdtemp(prefix="hookloop-ref-")
    atexit.register(lambda: __import__("shutil").rmtree(tmp, ignore_errors=True))
    extract_ref(ref, Path(tmp))
    sys.path.insert(0, tmp)
    return importlib.import_module("hookloop_ref")


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def per_step(stamps: list[float], warmup: int) -> tuple[float, float]:
    """Median and mean seconds per step: after `warmup` steps on the CPU; on CUDA, the mean
    of the whole synchronized loop (for both figures)."""
    if DEVICE.type == "cuda":
        mean = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        return mean, mean
    diffs = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1 :], strict=False)]
    return statistics.median(diffs), sum(diffs) / len(diffs)


def bench(
    name: str,
    setup: Callable,
    steps: int,
    rounds: int,
    seed: int,
    variants: tuple[str, ...] = ("raw", "engine", "defaults"),
) -> list[str]:
    medians: dict[str, list[float]] = {v: [] for v in variants}
    means: dict[str, list[float]] = {v: [] for v in variants}
    if DEVICE.type == "cuda":
        for variant in variants:  # warm-up round: CUDA context, kernels, allocator
            run_variant(variant, setup, steps, seed)
        PLUGIN_COSTS.clear()
    for _ in range(rounds):
        for variant in variants:
            median, mean = per_step(run_variant(variant, setup, steps, seed), warmup=steps // 10)
            medians[variant].append(median)
            means[variant].append(mean)
    raw = statistics.median(medians["raw"])
    rows = [
        f"\n### {name}: {steps} steps x {rounds} interleaved rounds\n",
        "| variant | median µs/step (min–max over rounds) | mean µs/step | ratio to raw "
        "| overhead µs/step |",
        "| --- | --- | --- | --- | --- |",
    ]
    for v in variants:
        med = statistics.median(medians[v])
        rows.append(
            f"| {v} | {med * 1e6:.1f} ({min(medians[v]) * 1e6:.1f}–{max(medians[v]) * 1e6:.1f}) "
            f"| {statistics.median(means[v]) * 1e6:.1f} | {med / raw:.4f} "
            f"| {(med - raw) * 1e6:+.1f} |"
        )
    trackers = [v for v in variants if v in TRACKERS]
    alone = [v for v in variants if v.startswith("+")]
    if alone:
        rows.append(
            "\nEach plugin alone, µs/step over raw (median of the rounds' differences): "
            + ", ".join(
                f"{v[1:]} {statistics.median(a - b for a, b in zip(medians[v], medians['raw'], strict=True)) * 1e6:+.1f}"
                for v in alone
            )
        )
    if trackers:
        rows.append(
            "\nTime inside the tracker's hooks on the training thread, µs/step over the timed "
            "steps (median, min-max over rounds): "
            + ", ".join(
                f"{t} {statistics.median(PLUGIN_COSTS[t]):.1f} "
                f"({min(PLUGIN_COSTS[t]):.1f}-{max(PLUGIN_COSTS[t]):.1f})"
                for t in trackers
            )
        )
        for t in trackers:
            PLUGIN_COSTS.pop(t)
    if "defaults" not in variants:
        return rows
    costs = ", ".join(
        f"{name} {statistics.median(us):.1f}"
        for name, us in sorted(PLUGIN_COSTS.items(), key=lambda kv: -statistics.median(kv[1]))
        if name != "clock"
    )
    rows.append(
        f"\nTime inside each default plugin's hooks, µs/step (median over rounds, "
        f"including periodic work): {costs}"
    )
    PLUGIN_COSTS.clear()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mlp", "transformer", "both"), default="both")
    parser.add_argument("--steps", type=int, default=0, help="steps per round (default per model)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--variants",
        default="raw,engine,defaults",
        help="comma-separated, raw first: raw, engine, defaults, mlflow, wandb, +NAME",
    )
    parser.add_argument(
        "--per-plugin", action="store_true", help="add +NAME for every default plugin"
    )
    parser.add_argument("--ref", help="also run the engine variants of this commit (VARIANT@REF)")
    parser.add_argument("--fused", action="store_true", help="AdamW(fused=True) everywhere")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: stamp steps with the thread's CPU time, which other processes disturb less",
    )
    args = parser.parse_args(argv)
    if args.clock == "cpu":
        time.perf_counter = time.thread_time  # the benchmark's own stamps only
    variants = tuple(args.variants.split(","))
    if args.per_plugin:
        variants += tuple(f"+{name}" for name in DEFAULT_PLUGINS)
    known = {"raw", "engine", "defaults", *TRACKERS}
    if variants[0] != "raw" or not all(v in known or v.startswith("+") for v in variants):
        parser.error(f"--variants must start with raw and name known variants: {args.variants}")
    global DEVICE, FUSED, REF
    DEVICE, FUSED = torch.device(args.device), args.fused
    if args.ref:
        REF = import_ref(args.ref)
        variants = (
            variants[:1]
            + tuple(f"{v}@ref" for v in variants[1:] if v not in TRACKERS)
            + variants[1:]
        )
    torch.set_num_threads(1)  # two threads stall intermittently on 2-core hosts
    configure_logging(stream=io.StringIO())  # keep plugin log lines out of the table
    default_names = [p.name for p in default_plugins(None, False)]
    where = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu"
    print(
        f"torch {torch.__version__} on {where}, {torch.get_num_threads()} thread, "
        f"AdamW{'(fused=True)' if FUSED else ''}{f', @ref = {args.ref}' if args.ref else ''}, "
        f"{args.clock} clock, "
        f"default plugins: {', '.join(default_names) or '(none)'}"
    )
    models = {"mlp": (mlp_setup, 3000), "transformer": (transformer_setup, 150)}
    for name in models if args.model == "both" else [args.model]:
        setup, default_steps = models[name]
        steps = args.steps or default_steps
        for row in bench(name, setup, steps, args.rounds, args.seed, variants):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
