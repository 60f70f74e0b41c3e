"""Checkpoint save/load time and size: hookloop's format against torch.save/torch.load.

The state is a model of `n` Linear(1024, 1024) layers plus its AdamW state after one step
(so 3 tensors per parameter: weights, exp_avg, exp_avg_sq). Per size and round, in an order
that alternates between rounds:

    save crc32      save_checkpoint(): safetensors + state.json, CRC-32, fsync, rename
    save sha256     the same with checksum="sha256"
    load crc32      load_checkpoint() into a fresh model/optimizer, checksums verified
    load sha256     the same, of the sha256 checkpoint
    ref save/load   the same with the checkpoint code of commit --ref (if given)
    torch.save      torch.save({"model", "optimizer"}) to one file, then fsync (same durability)
    torch.load      torch.load(weights_only=True) of that file + load_state_dict of both
    stall new       what a background save costs the training loop when it copies every
                    tensor into new memory (`snapshot(copy=True)`); the write runs on a thread
    stall reused    the same, copying into the buffers of the last background save, as the
                    `checkpoint` plugin does from its second background save on

torch.load appears here only, on the file this script has just written, with
weights_only=True. Each number is the median over rounds (min-max in brackets); the ratios
below each table are medians of the per-round ratios.

    python benchmarks/checkpoint_io.py                    # 2M and 25M parameters, 5 rounds
    python benchmarks/checkpoint_io.py --layers 24 --rounds 7 --ref b60e470
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
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


def measure(layers: int, rounds: int, work: Path, ref: Any) -> tuple[dict, dict]:
    """Seconds of each variant per round, and the sizes on disk."""
    engine, fresh = make_engine(layers), make_engine(layers)
    spare = ckpt.snapshot(engine, copy=True)
    # Each round writes new files (as periodic saves do), so no save pays for deleting or
    # truncating the last round's; they are removed between rounds, outside the timings.
    round_dir = work / "round"
    pt = round_dir / "state.pt"

    def save(module: Any, name: str, **kw: Any) -> Callable[[], object]:
        return lambda: module.save_checkpoint(engine, round_dir / name, **kw)

    def load(module: Any, name: str) -> Callable[[], object]:
        return lambda: module.load_checkpoint(fresh, round_dir / name)

    variants: dict[str, Callable[[], object]] = {
        "torch.save": lambda: torch_save(engine, pt),
        "save crc32": save(ckpt, "crc32"),
        "save sha256": save(ckpt, "sha256", checksum="sha256"),
        "torch.load": lambda: torch_load(fresh, pt),
        "load crc32": load(ckpt, "crc32"),
        "load sha256": load(ckpt, "sha256"),
        "stall new": lambda: ckpt.snapshot(engine, copy=True),
        "stall reused": lambda: ckpt.snapshot(engine, copy=True, reuse=spare),
    }
    if ref is not None:
        variants["ref save"] = save(ref, "ref")
        variants["ref load"] = load(ref, "ref")
    times: dict[str, list[float]] = {k: [] for k in variants}
    order = sorted(variants, key=lambda k: ("load" in k, "stall" in k))  # saves before loads
    for r in range(rounds):
        shutil.rmtree(round_dir, ignore_errors=True)
        os.sync()  # the deletions reach the disk before the next round's writes start
        round_dir.mkdir()
        for name in order if r % 2 == 0 else _reversed_within(order):
            times[name].append(timed(variants[name]))
    sizes = {
        "hookloop": sum(p.stat().st_size for p in (round_dir / "crc32").iterdir()),
        "torch": pt.stat().st_size,
    }
    return times, sizes


def _reversed_within(order: list[str]) -> list[str]:
    """Each group (saves, loads, stalls) in reverse order, the groups as they were."""
    groups: dict[tuple, list[str]] = {}
    for name in order:
        groups.setdefault(("load" in name, "stall" in name), []).append(name)
    return [name for group in groups.values() for name in reversed(group)]


def ratio(times: dict[str, list[float]], a: str, b: str) -> str:
    values = [x / y for x, y in zip(times[a], times[b], strict=True)]
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 24])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ref", help="also time the checkpoint code of this commit")
    args = parser.parse_args()
    torch.set_num_threads(1)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as tmp:
        ref = None
        if args.ref:
            sys.path.insert(0, str(Path(__file__).parent))
            from engine_versions import extract_ref

            extract_ref(args.ref, Path(tmp))
            sys.path.insert(0, tmp)
            ref = importlib.import_module("hookloop_ref.checkpoint")
        print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, 1 thread, rounds={args.rounds}")
        for layers in args.layers:
            work = Path(tmp) / f"work-{layers}"
            work.mkdir()
            times, sizes = measure(layers, args.rounds, work, ref)
            shutil.rmtree(work)
            params = layers * (1024 * 1024 + 1024)
            print(f"\n{params / 1e6:.1f}M parameters\n")
            print("| what | seconds (median) | min-max | size MB |")
            print("| --- | --- | --- | --- |")
            for what, values in times.items():
                size = sizes["torch" if what.startswith("torch") else "hookloop"] / 1e6
                shown = f"{size:.1f}" if "stall" not in what else ""
                print(
                    f"| {what} | {statistics.median(values):.4f} | "
                    f"{min(values):.4f}-{max(values):.4f} | {shown} |"
                )
            print("\nratios, median (min-max) over rounds:")
            print(f"- save crc32 / torch.save: {ratio(times, 'save crc32', 'torch.save')}")
            print(f"- load crc32 / torch.load: {ratio(times, 'load crc32', 'torch.load')}")
            print(f"- load sha256 / torch.load: {ratio(times, 'load sha256', 'torch.load')}")
            print(f"- stall reused / save crc32: {ratio(times, 'stall reused', 'save crc32')}")
            print(f"- stall new / save crc32: {ratio(times, 'stall new', 'save crc32')}")
            if ref is not None:
                print(f"- ref save / torch.save: {ratio(times, 'ref save', 'torch.save')}")
                print(f"- ref load / torch.load: {ratio(times, 'ref load', 'torch.load')}")


if __name__ == "__main__":
    main()
