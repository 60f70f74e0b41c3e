"""Engine-only cost per step of this tree against an older commit, in one process.

A refactor of the loop must not make the engine slower. Separate processes minutes apart
are not comparable on a shared 2-core machine, so this loads the engine of `--ref` (extracted
with `git archive` and imported under the name `hookloop_ref`) next to the installed one and
interleaves three variants on the MLP of `benchmarks/overhead.py`, in short rounds:

    raw    the hand-written loop
    ref    Engine(...).fit() of the commit given as --ref, no plugins
    tree   Engine(...).fit() of this tree, no plugins

    python benchmarks/engine_versions.py --ref 6fad941 --steps 2000 --rounds 9
    python benchmarks/engine_versions.py --ref HEAD~5 --clock cpu   # thread CPU time

`--clock cpu` stamps steps with the thread's CPU time instead of the wall clock, which
other processes' load disturbs less (but still some: caches and the shared core).
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def extract_ref(ref: str, into: Path) -> None:
    """Lay out `ref`'s engine/ and plugins/ as an importable package `hookloop_ref`."""
    archive = into / "ref.tar"
    subprocess.run(
        ["git", "-C", str(REPO), "archive", "-o", str(archive), ref, "engine", "plugins"],
        check=True,
    )
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    package = into / "hookloop_ref"
    (into / "engine").rename(package)
    shutil.move(into / "plugins", package / "plugins")
    for source in package.rglob("*.py"):
        text = source.read_text()
        text = re.sub(r"\bhookloop(?=[.\s])", "hookloop_ref", text)
        source.write_text(text)


def run(kind: str, engines: dict, steps: int, overhead) -> float:
    """Median µs per step of one round of `kind`."""
    import torch

    model, batches, loss_fn, _ = overhead.mlp_setup(0, steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stamps = [time.perf_counter()]
    if kind == "raw":
        overhead.raw_loop(model, optimizer, batches, loss_fn, stamps)
    else:
        clock = overhead.Clock(stamps)
        engine = engines[kind](model, optimizer, batches, loss_fn=loss_fn, plugins=[clock])
        stamps[0] = time.perf_counter()
        engine.fit(max_steps=steps)
    gaps = [b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)][50:]
    return statistics.median(gaps) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="the commit to compare with, e.g. HEAD~3")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args(argv)
    if args.clock == "cpu":
        time.perf_counter = time.thread_time  # the benchmark's own stamps only
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO / "benchmarks"))
    overhead = importlib.import_module("overhead")
    from hookloop import Engine

    with tempfile.TemporaryDirectory() as tmp:
        extract_ref(args.ref, Path(tmp))
        sys.path.insert(0, tmp)
        engines = {"tree": Engine, "ref": importlib.import_module("hookloop_ref").Engine}
        results: dict[str, list[float]] = {"raw": [], "ref": [], "tree": []}
        for r in range(args.rounds):
            order = ("raw", "ref", "tree") if r % 2 == 0 else ("tree", "ref", "raw")
            for kind in order:
                results[kind].append(run(kind, engines, args.steps, overhead))
    raw = statistics.median(results["raw"])
    print(f"mlp: {args.steps} steps x {args.rounds} interleaved rounds, {args.clock} clock")
    print("| variant | median µs/step (min–max) | ratio to raw | overhead µs/step |")
    print("| --- | --- | --- | --- |")
    for kind, values in results.items():
        m = statistics.median(values)
        print(
            f"| {kind} | {m:.1f} ({min(values):.1f}–{max(values):.1f}) | {m / raw:.4f} | {m - raw:+.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
