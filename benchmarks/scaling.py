"""Scaling curves: hookloop's step time against a raw loop as the model grows, and training
memory against the size of the corpus. Both are plotted as PNGs for the guide.

Step time: for each sequence length and width of a grid, the TinyTransformerLM of
benchmarks/peers.py (2 layers, 4 heads, d_ff 4 x width, batch `--batch`) trains the same steps
from the same seed as `raw` (the hand-written loop of peers.py) and as `defaults` (the
Engine with every default plugin, clip, schedule and console set as in peers.py); rounds
interleave the two, and a point is the median over rounds of `defaults / raw` in the same
round (each run's figure: the median step time after the first tenth of its steps). The
steps per run are chosen from a first timed step, so that a run lasts about `--seconds` (at least 6 steps, at most 60).

Memory: for each corpus size, a uint16 token file of random ids is written and a fresh process
trains on it through the recipe's memory-mapped data path (the child of
benchmarks/memmap_rss.py); the plot shows the resident memory after training and its peak.

    python benchmarks/scaling.py                           # both curves into docs/img/
    python benchmarks/scaling.py --curve steps --seq-lens 64,256 --widths 64,512 --rounds 3
    python benchmarks/scaling.py --curve rss --sizes-mb 10,100,1000

Needs matplotlib (in the `dev` and `plot` extras).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import memmap_rss  # noqa: E402  (benchmarks/ is not a package)
import peers  # noqa: E402

OUT = HERE.parent / "docs" / "img"


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def step_ratios(
    seq_lens: list[int], widths: list[int], batch: int, rounds: int, seconds: float
) -> dict[tuple[int, int], dict[str, list[float]]]:
    """Per (seq_len, width): raw's median step in ms and defaults / raw, for each round."""
    points: dict[tuple[int, int], dict[str, list[float]]] = {}
    for width in widths:
        for seq_len in seq_lens:
            shape = {"seq_len": seq_len, "width": width, "layers": 2, "batch": batch}
            first, _ = peers.train("raw", "transformer", 0, 2, **shape)
            steps = max(6, min(60, round(seconds / first[-1])))
            raw, ratio, skip = [], [], max(1, steps // 10)
            for _ in range(rounds):
                times = {
                    v: statistics.median(peers.train(v, "transformer", 0, steps, **shape)[0][skip:])
                    for v in ("raw", "defaults")
                }
                raw.append(times["raw"] * 1e3)
                ratio.append(times["defaults"] / times["raw"])
            points[(seq_len, width)] = {"raw_ms": raw, "ratio": ratio}
            print(
                f"| {seq_len} | {width} | {steps} | {peers.spread(raw, '.1f')} "
                f"| {peers.spread(ratio, '.3f')} |",
                flush=True,
            )
    return points


def plot_steps(points: dict, seq_lens: list[int], widths: list[int], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    for width in widths:
        ms = [statistics.median(points[(s, width)]["raw_ms"]) for s in seq_lens]
        med = [statistics.median(points[(s, width)]["ratio"]) for s in seq_lens]
        low = [m - min(points[(s, width)]["ratio"]) for s, m in zip(seq_lens, med, strict=True)]
        high = [max(points[(s, width)]["ratio"]) - m for s, m in zip(seq_lens, med, strict=True)]
        left.plot(seq_lens, ms, marker="o", label=f"width {width}")
        right.errorbar(
            seq_lens, med, yerr=[low, high], marker="o", capsize=3, label=f"width {width}"
        )
    left.set(xscale="log", yscale="log", xlabel="sequence length", ylabel="raw step, ms")
    left.set_title("raw loop: time per step", fontsize=10)
    right.axhline(1.0, color="grey", lw=0.8)
    right.set(xscale="log", xlabel="sequence length", ylabel="hookloop (defaults) / raw")
    right.set_title("hookloop with every default plugin, over raw", fontsize=10)
    for ax in (left, right):
        ax.set_xticks(seq_lens, [str(s) for s in seq_lens])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def rss_points(sizes_mb: list[float], steps: int) -> list[tuple[float, dict]]:
    """Per corpus size: the memmap_rss child's resident memory figures (MB)."""
    rows = []
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="hookloop-rss-") as tmp:
        for mb in sizes_mb:
            path = Path(tmp) / f"tokens-{mb:g}MB.bin"
            memmap_rss.make_file(path, mb)
            out = subprocess.run(
                [sys.executable, memmap_rss.__file__, "--child", str(path), "--steps", str(steps)],
                capture_output=True,
                text=True,
                check=True,
                timeout=1200,
                env={**os.environ, "HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD": "1"},
            )
            path.unlink()
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((mb, result))
            print(
                f"| {mb:g} MB | {result['before']['VmRSS']:.0f} | {result['after']['VmRSS']:.0f} "
                f"| {result['after']['VmHWM']:.0f} |",
                flush=True,
            )
    return rows


def plot_rss(rows: list[tuple[float, dict]], steps: int, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [mb for mb, _ in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    for key, label in (("VmRSS", "after training"), ("VmHWM", "peak")):
        ax.plot(sizes, [r["after"][key] for _, r in rows], marker="o", label=label)
    ax.plot(
        sizes, [r["before"]["VmRSS"] for _, r in rows], marker="o", ls=":", label="before the data"
    )
    ax.set(xscale="log", xlabel="token file, MB", ylabel="resident memory, MB", ylim=(0, None))
    ax.set_title(f"RSS while training {steps} steps on a memory-mapped corpus", fontsize=10)
    ax.set_xticks(sizes, [f"{s:g}" for s in sizes])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curve", choices=("steps", "rss", "both"), default="both")
    parser.add_argument("--seq-lens", type=ints, default=[64, 128, 256, 512])
    parser.add_argument("--widths", type=ints, default=[64, 128, 256, 512])
    parser.add_argument("--batch", type=int, default=2, help="sequences per batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.5, help="about how long a run lasts")
    parser.add_argument("--sizes-mb", default="10,30,100,300,1000")
    parser.add_argument("--rss-steps", type=int, default=300)
    parser.add_argument("--clock", choices=peers.CLOCKS, default="wall", help="see peers.py")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNGs")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    peers.CLOCK = peers.CLOCKS[args.clock]
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"torch {torch.__version__}, 1 torch thread, {args.clock} clock, load average {os.getloadavg()[0]:.1f}"
    )
    started = time.perf_counter()
    if args.curve in ("steps", "both"):
        print(f"\n{args.rounds} interleaved rounds per point, 2 layers, batch {args.batch}\n")
        print("| seq len | width | steps | raw ms/step, median (min–max) | defaults / raw |")
        print("| ---: | ---: | ---: | --- | --- |")
        points = step_ratios(args.seq_lens, args.widths, args.batch, args.rounds, args.seconds)
        plot_steps(points, args.seq_lens, args.widths, args.out / "scaling-step-time.png")
    if args.curve in ("rss", "both"):
        sizes = [float(x) for x in args.sizes_mb.split(",")]
        print(f"\n{args.rss_steps} steps, batch 32 x 64, d_model 64, 2 layers, uint16 ids\n")
        print("| token file | RSS before data MB | after training | peak (VmHWM) |")
        print("| ---: | ---: | ---: | ---: |")
        plot_rss(rss_points(sizes, args.rss_steps), args.rss_steps, args.out / "scaling-rss.png")
    print(f"\n{time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
