"""Streaming prepare at 10 MB, 100 MB and 1 GB: peak memory and throughput per tokenizer.

    .venv/bin/python benchmarks/prepare_scale.py [--sizes 10,100,1000] [--rounds 3]
        [--tokenizers char,byte,bpe] [--text FILE]

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
BPE). Medians with min-max over the rounds; MB/s counts corpus bytes. Everything is deleted
at the end.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAKESPEARE = Path("/work/shared/data/tinyshakespeare.txt")
PIECE = 1 << 22


def child(kind: str, corpus: str, out: str, tokenizer_file: str) -> None:
    """One measured run in this process; prints seconds and peak RSS as JSON."""
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    if kind == "copy":
        with open(corpus, "rb") as src, open(out, "wb") as dst:
            while data := src.read(PIECE):
                dst.write(data)
    elif kind == "bpe-own":
        from hookloop.lm.tokenizers import load_tokenizer

        tok = load_tokenizer(tokenizer_file)._tok
        with open(corpus, encoding="utf-8") as f:
            while text := f.read(PIECE * 2):
                tok.encode_batch_fast([text[i : i + 65536] for i in range(0, len(text), 65536)])
    else:
        from hookloop.lm.sources import open_source
        from hookloop.lm.stream import prepare_sources
        from hookloop.lm.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_file) if kind == "bpe" else kind
        prepare_sources(open_source(corpus), out, tokenizer=tokenizer, progress=False)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak}))


def measure(kind: str, corpus: Path, work: Path, tokenizer_file: Path) -> dict[str, float]:
    out = work / f"out-{kind}"
    args = [sys.executable, __file__, "--child", kind, str(corpus), str(out), str(tokenizer_file)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=3600, check=False)
    shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
    if result.returncode:
        raise SystemExit(f"{kind} on {corpus} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


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
    args = parser.parse_args()
    kinds = args.tokenizers.split(",")
    work = Path(tempfile.mkdtemp(prefix="prepare-scale-", dir=args.dir))
    try:
        tokenizer_file = work / "bpe.json"
        if "bpe" in kinds:
            from hookloop.lm.tokenizers import BpeTokenizer

            sample = work / "sample.txt"
            write_corpus(sample, 4, args.text)
            BpeTokenizer.train(sample.read_text(encoding="utf-8"), 4096).save(tokenizer_file)
        runs = [*kinds, "copy", *(["bpe-own"] if "bpe" in kinds else [])]
        print("| corpus | run | MB/s | seconds | peak RSS (MB) |")
        print("| ---: | --- | ---: | ---: | ---: |")
        for size in (int(s) for s in args.sizes.split(",")):
            corpus = work / f"corpus-{size}mb.txt"
            write_corpus(corpus, size, args.text)
            results: dict[str, list[dict[str, float]]] = {k: [] for k in runs}
            for _ in range(args.rounds_large if size >= 1000 else args.rounds):
                for kind in runs:
                    results[kind].append(measure(kind, corpus, work, tokenizer_file))
            for kind in runs:
                seconds = [r["seconds"] for r in results[kind]]
                rates = [size / s for s in seconds]
                peaks = [r["peak_mb"] for r in results[kind]]
                print(
                    f"| {size:,} MB | {kind} | {summary(rates)} | {summary(seconds)} | "
                    f"{summary(peaks)} |",
                    flush=True,
                )
            corpus.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
    else:
        main()
