"""Streaming prepare at 10 MB, 100 MB and 1 GB: peak memory and throughput per tokenizer.

    .venv/bin/python benchmarks/prepare_scale.py [--sizes 10,100,1000] [--rounds 3]
        [--tokenizers char,byte,bpe] [--text FILE] [--baseline GIT-REF]

Writes synthetic corpora of each size into a temporary directory (a text file repeated to
the size, tiny Shakespeare by default when it is there, else generated lines), then, each in
a fresh process so peak RSS (`ru_maxrss`) is that run's own, prepares it with each tokenizer
(`hookloop.lm.stream.prepare_sources`, the code behind `hookloop prepare`). The char run
includes its vocabulary pass; the BPE tokenizer is trained once on the first 4 MB and given
ready, so BPE measures encoding (training speed is the `tokenizers` package's).

Two baselines run in the same way, interleaved with the prepares (A B A B per round):
`copy`, reading the corpus in 4 MB pieces and writing it out again (the disk's ceiling on
this machine at that moment), and `bpe-own`, the `tokenizers` package's own parallel
`encode_batch_fast` over the same text in the same pieces, writing nothing (the ceiling for
BPE). With `--baseline REF`, the `char` and `byte` prepares of the code at git commit REF
(its `engine/` extracted into the temporary directory and imported in place of this one)
run interleaved too, as `old-char` and `old-byte`, and each round's new/old speed ratio is
reported: on a machine loaded by other jobs the ratio of runs made seconds apart is the
trustworthy figure. Medians with min-max over the rounds; MB/s counts corpus bytes, over
wall-clock seconds and over CPU seconds (user + system, all threads). Everything is deleted
at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAKESPEARE = Path("/work/shared/data/tinyshakespeare.txt")
REPO = Path(__file__).resolve().parent.parent
PIECE = 1 << 22


def child(kind: str, corpus: str, out: str, tokenizer_file: str) -> None:
    """One measured run in this process; prints wall and CPU seconds and peak RSS as JSON."""
    import torch

    torch.set_num_threads(1)
    from hookloop.lm.sources import open_source
    from hookloop.lm.stream import prepare_sources
    from hookloop.lm.tokenizers import load_tokenizer

    start, cpu = time.perf_counter(), time.process_time()  # imports done: throughput only
    if kind == "copy":
        with open(corpus, "rb") as src, open(out, "wb") as dst:
            while data := src.read(PIECE):
                dst.write(data)
    elif kind == "bpe-own":
        tok = load_tokenizer(tokenizer_file)._tok
        with open(corpus, encoding="utf-8") as f:
            while text := f.read(PIECE * 2):
                tok.encode_batch_fast([text[i : i + 65536] for i in range(0, len(text), 65536)])
    else:
        tokenizer = load_tokenizer(tokenizer_file) if kind == "bpe" else kind.removeprefix("old-")
        prepare_sources(open_source(corpus), out, tokenizer=tokenizer, progress=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    import hookloop

    print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_mb": peak, "code": hookloop.__file__}))


def extract(ref: str, work: Path) -> Path:
    """The `engine/` package of git commit `ref`, importable as `hookloop` from the result."""
    root = work / "baseline"
    root.mkdir()
    archive = subprocess.run(
        ["git", "archive", ref, "engine"], capture_output=True, check=True, cwd=REPO
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    (root / "engine").rename(root / "hookloop")
    return root


def measure(
    kind: str, corpus: Path, work: Path, tokenizer_file: Path, baseline: Path | None
) -> dict[str, float]:
    out = work / f"out-{kind}"
    args = [sys.executable, __file__, "--child", kind, str(corpus), str(out), str(tokenizer_file)]
    env = dict(os.environ)
    if kind.startswith("old-"):
        assert baseline is not None
        env["PYTHONPATH"] = str(baseline)
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=3600, check=False, env=env
    )
    shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
    if result.returncode:
        raise SystemExit(f"{kind} on {corpus} failed:\n{result.stderr[-3000:]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert (str(baseline) in measured["code"]) == kind.startswith("old-"), measured["code"]
    return measured


def write_corpus(path: Path, size_mb: int, source: Path | None) -> None:
    if source is not None and source.is_file():
        block = source.read_bytes()
    else:
        block = "".join(
            f"line {i}: the quick brown fox, {i * 7 % 13} times.\n" for i in range(20000)
        )
        block = block.encode()
    target = size_mb * 1_000_000
    with open(path, "wb") as f:
        written = 0
        while written < target:
            part = block[: target - written]
            f.write(part)
            written += len(part)


def summary(values: list[float]) -> str:
    med = statistics.median(values)
    return (
        f"{med:,.1f} ({min(values):,.1f}-{max(values):,.1f})" if len(values) > 1 else f"{med:,.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000", help="corpus sizes in MB")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per size")
    parser.add_argument("--rounds-large", type=int, default=1, help="rounds for sizes >= 1000 MB")
    parser.add_argument("--tokenizers", default="char,byte,bpe")
    parser.add_argument("--text", type=Path, default=SHAKESPEARE, help="text repeated to size")
    parser.add_argument("--dir", type=Path, default=None, help="where the corpora go (a temp dir)")
    parser.add_argument("--baseline", metavar="REF", help="also run char/byte of git commit REF")
    args = parser.parse_args()
    kinds = args.tokenizers.split(",")
    work = Path(tempfile.mkdtemp(prefix="prepare-scale-", dir=args.dir))
    try:
        baseline = extract(args.baseline, work) if args.baseline else None
        tokenizer_file = work / "bpe.json"
        if "bpe" in kinds:
            from hookloop.lm.tokenizers import BpeTokenizer

            sample = work / "sample.txt"
            write_corpus(sample, 4, args.text)
            BpeTokenizer.train(sample.read_text(encoding="utf-8"), 4096).save(tokenizer_file)
        old = [f"old-{k}" for k in kinds if baseline and k in ("char", "byte")]
        runs = [*kinds, *old, "copy", *(["bpe-own"] if "bpe" in kinds else [])]
        print("| corpus | run | MB/s | MB per CPU-second | seconds | peak RSS (MB) |")
        print("| ---: | --- | ---: | ---: | ---: | ---: |")
        ratios = []
        for size in (int(s) for s in args.sizes.split(",")):
            corpus = work / f"corpus-{size}mb.txt"
            write_corpus(corpus, size, args.text)
            results: dict[str, list[dict[str, float]]] = {k: [] for k in runs}
            for _ in range(args.rounds_large if size >= 1000 else args.rounds):
                for kind in runs:
                    results[kind].append(measure(kind, corpus, work, tokenizer_file, baseline))
            for kind in runs:
                seconds = [r["seconds"] for r in results[kind]]
                cpu = [size / r["cpu"] for r in results[kind]]
                peaks = [r["peak_mb"] for r in results[kind]]
                rates = [size / s for s in seconds]
                print(
                    f"| {size:,} MB | {kind} | {summary(rates)} | {summary(cpu)} | "
                    f"{summary(seconds)} | {summary(peaks)} |",
                    flush=True,
                )
            for kind in old:
                new = kind.removeprefix("old-")
                pairs = zip(results[kind], results[new], strict=True)
                wall = [o["seconds"] / n["seconds"] for o, n in pairs]
                pairs = zip(results[kind], results[new], strict=True)
                cpu = [o["cpu"] / n["cpu"] for o, n in pairs]
                ratios.append(f"| {size:,} MB | {new} | {summary(wall)} | {summary(cpu)} |")
            corpus.unlink()
        if ratios:
            print(f"\nSpeed-up over {args.baseline}, per round (old seconds / new seconds):\n")
            print("| corpus | tokenizer | wall-clock | CPU |\n| ---: | --- | ---: | ---: |")
            print("\n".join(ratios))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
    else:
        main()
