"""Checkpoint save/load time and size: hookloop's format against torch.save/torch.load.

The state is a model of `n` Linear(1024, 1024) layers plus its AdamW state after one step
(so 3 tensors per parameter: weights, exp_avg, exp_avg_sq). Per size and round:

    hookloop save   save_checkpoint(): safetensors + state.json, SHA-256, fsync, rename
    hookloop load   load_checkpoint() into a fresh model/optimizer, checksums verified
    torch.save      torch.save({"model", "optimizer"}) to one file, then fsync (same durability)
    torch.load      torch.load(weights_only=True) of that file + load_state_dict of both
    stall (bg)      what a background save costs the training loop: the copy to CPU
                    (`snapshot(copy=True)`); the write then runs on a thread

torch.load appears here only, on the file this script has just written, with
weights_only=True. Each number is the median over rounds (min-max in brackets).

    python benchmarks/checkpoint_io.py                    # 2M and 25M parameters, 5 rounds
    python benchmarks/checkpoint_io.py --layers 2 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hookloop import Engine
from hookloop import checkpoint as ckpt


def make_engine(layers: int) -> Engine:
    """A model of `layers` 1024x1024 Linear layers with AdamW state after one step."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(layers)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 1024)).square().mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return Engine(model, optimizer, [], loss_fn=lambda m, b: m(b).sum())


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def torch_save(engine: Engine, path: Path) -> None:
    state = {"model": engine.model.state_dict(), "optimizer": engine.optimizer.state_dict()}
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def torch_load(engine: Engine, path: Path) -> None:
    state = torch.load(path, weights_only=True)
    engine.model.load_state_dict(state["model"])
    engine.optimizer.load_state_dict(state["optimizer"])


def measure(layers: int, rounds: int, work: Path) -> dict[str, list[float]]:
    engine, fresh = make_engine(layers), make_engine(layers)
    times: dict[str, list[float]] = {
        k: [] for k in ("hookloop save", "hookloop load", "torch.save", "torch.load", "stall (bg)")
    }
    for r in range(rounds):
        directory = work / f"ckpt-{r}"
        pt = work / f"state-{r}.pt"
        times["torch.save"].append(timed(lambda: torch_save(engine, pt)))  # noqa: B023
        times["hookloop save"].append(timed(lambda: ckpt.save_checkpoint(engine, directory)))  # noqa: B023
        times["torch.load"].append(timed(lambda: torch_load(fresh, pt)))  # noqa: B023
        times["hookloop load"].append(timed(lambda: ckpt.load_checkpoint(fresh, directory)))  # noqa: B023
        times["stall (bg)"].append(timed(lambda: ckpt.snapshot(engine, copy=True)))
    sizes = {
        "hookloop": sum(p.stat().st_size for p in directory.iterdir()),
        "torch": pt.stat().st_size,
    }
    return times, sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 24])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, 1 thread, rounds={args.rounds}\n")
    print("| parameters | what | seconds (median) | min-max | size MB |")
    print("| --- | --- | --- | --- | --- |")
    for layers in args.layers:
        with tempfile.TemporaryDirectory() as tmp:
            times, sizes = measure(layers, args.rounds, Path(tmp))
        params = layers * (1024 * 1024 + 1024)
        for what, values in times.items():
            size = sizes["torch" if what.startswith("torch") else "hookloop"] / 1e6
            shown = f"{size:.1f}" if "stall" not in what else ""
            print(
                f"| {params / 1e6:.1f}M | {what} | {statistics.median(values):.4f} | "
                f"{min(values):.4f}-{max(values):.4f} | {shown} |"
            )


if __name__ == "__main__":
    main()
