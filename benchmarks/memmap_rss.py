"""Resident memory while training on a small vs a large memory-mapped token file.

    .venv/bin/python benchmarks/memmap_rss.py [--small-mb 10] [--large-mb 1000] [--steps 300]

Writes two uint16 token files of random ids (10 MB and 1 GB by default) under /tmp, then,
for each in a fresh process, builds the recipe's dataset (which checks every id against the
vocabulary once) and trains a small TinyTransformerLM on random windows for `--steps` steps,
reading resident memory (VmRSS, and the peak VmHWM) before and after. The files are deleted
at the end. The dataset reopens its memory map per batch, so the pages it touched do not
accumulate in the process: the two runs should differ by well under 50 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

VOCAB = 96


def rss_mb() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssFile", "RssAnon"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def child(path: str, steps: int) -> None:
    import torch

    from hookloop import Engine
    from hookloop.lm.data import TokenDataset
    from hookloop.lm.model import TinyTransformerLM
    from hookloop.lm.optim import build_adamw

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TinyTransformerLM(VOCAB, d_model=64, n_heads=4, n_layers=2, d_ff=256, max_seq_len=64)
    engine = Engine(model, build_adamw(model), None)  # data set below, after the baseline
    before = rss_mb()
    engine.train_data = TokenDataset(
        path,
        seq_len=64,
        batch_size=32,
        vocab_size=VOCAB,
        sampling="random",
        batches_per_epoch=steps,
    )
    after_check = rss_mb()
    engine.fit(max_steps=steps)
    after = rss_mb()
    print(json.dumps({"before": before, "after_check": after_check, "after": after}))


def make_file(path: Path, mb: float) -> None:
    rng = np.random.default_rng(0)
    n = int(mb * 1e6) // 2
    with open(path, "wb") as f:
        for start in range(0, n, 1 << 24):
            rng.integers(0, VOCAB, min(1 << 24, n - start), dtype=np.uint16).tofile(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-mb", type=float, default=10)
    parser.add_argument("--large-mb", type=float, default=1000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps)
        return
    rows = []
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="hookloop-rss-") as tmp:
        for mb in (args.small_mb, args.large_mb):
            path = Path(tmp) / f"tokens-{mb:g}MB.bin"
            make_file(path, mb)
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(path), "--steps", str(args.steps)],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD": "1"},
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((mb, result))
            path.unlink()
    print(f"{args.steps} training steps, batch 32 x 64 random windows, uint16 ids\n")
    print(
        "| token file | RSS before data (MB) | after id check | after training | peak (VmHWM) | file-backed after |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for mb, r in rows:
        print(
            f"| {mb:g} MB | {r['before']['VmRSS']:.0f} | {r['after_check']['VmRSS']:.0f} | "
            f"{r['after']['VmRSS']:.0f} | {r['after']['VmHWM']:.0f} | {r['after']['RssFile']:.0f} |"
        )
    diff = rows[1][1]["after"]["VmRSS"] - rows[0][1]["after"]["VmRSS"]
    peak = rows[1][1]["after"]["VmHWM"] - rows[0][1]["after"]["VmHWM"]
    print(
        f"\ndifference large - small: {diff:+.1f} MB after training, {peak:+.1f} MB at peak "
        f"(target: under 50 MB)"
    )


if __name__ == "__main__":
    main()
