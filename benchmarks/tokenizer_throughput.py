"""Tokenizer throughput: MB of UTF-8 text per second through encode and decode.

    .venv/bin/python benchmarks/tokenizer_throughput.py [--text FILE] [--mb 32] [--repeat 5]

The text (default: tiny Shakespeare from ../shared/data, else the Python standard library
slice of the default corpus) is repeated to about `--mb` MB; each tokenizer encodes and
decodes it `--repeat` times and the best time counts. The char and byte tokenizers must
exceed 20 MB/s on a 2-core CPU host; BPE (the optional `tokenizers` package) is listed for
comparison, on a 1/8 slice because it is much slower.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from hookloop.lm.tokenizers import build_tokenizer

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def best_seconds(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, default=None)
    parser.add_argument("--mb", type=float, default=32)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if args.text is None and SHAKESPEARE.is_file():
        args.text = SHAKESPEARE
    if args.text is not None:
        base = args.text.read_text(encoding="utf-8")
    else:
        from hookloop.lm.corpus import stdlib_texts

        base = stdlib_texts()[0]
    text = base * max(1, round(args.mb * 1e6 / len(base.encode())))
    print(
        f"text: {args.text or 'stdlib slice'} x{len(text) // len(base)} = "
        f"{len(text.encode()) / 1e6:.1f} MB\n"
    )
    print("| tokenizer | vocab | encode MB/s | decode MB/s | tokens per byte |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for kind in ("char", "byte", "bpe"):
        sample = text if kind != "bpe" else text[: len(text) // 8]
        try:
            tok = build_tokenizer(kind, base, vocab_size=1024)
        except Exception as exc:  # bpe without the optional package
            print(f"| {kind} | - | skipped: {exc} | | |")
            continue
        size = len(sample.encode()) / 1e6
        ids = tok.encode(sample)
        enc = best_seconds(lambda s=sample, t=tok: t.encode(s), args.repeat)
        dec = best_seconds(lambda i=ids, t=tok: t.decode(i), args.repeat)
        print(
            f"| {kind} | {tok.vocab_size} | {size / enc:.0f} | {size / dec:.0f} | "
            f"{len(ids) / (size * 1e6):.3f} |"
        )


if __name__ == "__main__":
    main()
