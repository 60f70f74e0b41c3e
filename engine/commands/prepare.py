"""Tokenize text once into a prepared data directory: train.bin and val.bin (flat token ids,
uint16 when the vocabulary fits, else uint32), tokenizer.json and meta.json.

The text is read and tokenized in bounded pieces (memory does not grow with the corpus)
from a text file, a directory, JSON lines (`.jsonl`), Parquet or a Hugging Face dataset.
Documents go whole to the training or the validation split; byte and BPE tokenizers put an
end-of-text token between documents. The vocabulary is built once from all the text and
shared by both splits (and, through the run directory, by sampling). Point training at the
result with `--set data.path=DIR`.

Examples:
    hookloop prepare input.txt --out data/mytext
    hookloop prepare notes/ --glob "*.md" --tokenizer byte --out data/notes
    hookloop prepare stories.jsonl --text-field text --tokenizer bpe --out data/stories
    hookloop prepare train.txt --val val.txt --tokenizer bpe --bpe-vocab-size 2048 --out data/bpe
    hookloop prepare more.jsonl --tokenizer-from data/stories --out data/more
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hookloop.cli import command_line

MAX_VOCAB = 1 << 24
"""Largest `--bpe-vocab-size`, 64 times the largest vocabularies in use (256k): the BPE
trainer reserves about 130 bytes per entry up front (2**30 asks for 140 GB and aborts the
process without a Python error)."""
MAX_PIECE = 1 << 30
"""Largest `--piece-bytes`: a piece is held in memory, decoded and tokenized at once."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `prepare` options."""
    parser.add_argument(
        "source",
        metavar="PATH",
        nargs="?",
        help="a UTF-8 text file, a .jsonl or .parquet file, or a directory of them "
        "(read in sorted order)",
    )
    parser.add_argument("--out", metavar="DIR", help="directory to create (required)")
    parser.add_argument(
        "--example-text",
        metavar="FILE",
        help="write a known text of about 1 MB to FILE and stop: a slice of the Python "
        "standard library's sources, on every machine, offline (then prepare FILE)",
    )
    parser.add_argument("--tokenizer", choices=("char", "byte", "bpe"), default="char")
    parser.add_argument(
        "--tokenizer-from",
        metavar="DIR",
        help="use the tokenizer of this prepared directory instead of building one (so "
        "several corpora share it, as data.sources needs)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="fraction F of the documents for validation, chosen with --seed; a single "
        "text document gives its last F instead (default: 0.1)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the validation documents (default: 0)"
    )
    parser.add_argument(
        "--val",
        metavar="PATH",
        help="separate validation text (then --val-fraction is not used)",
    )
    parser.add_argument(
        "--glob", default="*", help="file pattern inside directories (default: every file)"
    )
    parser.add_argument(
        "--text-field",
        default="text",
        metavar="NAME",
        help="field of JSON lines / column of Parquet and datasets holding the text "
        "(default: text)",
    )
    parser.add_argument(
        "--hf-dataset",
        metavar="PATH",
        help="a local directory written by a Hugging Face dataset's save_to_disk (never "
        "downloaded; needs pip install '.[datasets]' in the hookloop checkout)",
    )
    parser.add_argument(
        "--split",
        default=None,
        help="split of a saved DatasetDict (default: train); a single saved Dataset needs none",
    )
    parser.add_argument(
        "--bpe-vocab-size",
        type=int,
        default=4096,
        metavar="N",
        help="vocabulary size of a trained BPE (default: 4096)",
    )
    parser.add_argument(
        "--piece-bytes",
        type=int,
        default=1 << 22,
        metavar="N",
        help="bytes of a text file read and tokenized at a time (default: 4 MiB)",
    )


def run(args: argparse.Namespace) -> int:
    """Read, split, tokenize and write; print a summary."""
    import sys

    from hookloop.errors import ConfigError
    from hookloop.lm.prepare import prepare_sources
    from hookloop.lm.sources import open_source

    if not 257 <= args.bpe_vocab_size <= MAX_VOCAB:
        raise ConfigError(
            f"--bpe-vocab-size must be from 257 to {MAX_VOCAB:,}, got {args.bpe_vocab_size}"
        )
    if not 1 <= args.piece_bytes <= MAX_PIECE:
        raise ConfigError(
            f"--piece-bytes must be from 1 to {MAX_PIECE:,} (1 GiB), got {args.piece_bytes}"
        )
    if args.example_text is not None:
        return _write_example_text(Path(args.example_text))
    if args.out is None:
        raise ConfigError("--out DIR is required: the directory to write the prepared data to")
    if (args.source is None) == (args.hf_dataset is None):
        raise ConfigError("give either a PATH to prepare or --hf-dataset PATH (one of them)")
    tokenizer = args.tokenizer
    if args.tokenizer_from:
        from hookloop.lm.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(Path(args.tokenizer_from) / "tokenizer.json")
    options = {"glob": args.glob, "text_field": args.text_field, "piece_bytes": args.piece_bytes}
    train = open_source(args.source, hf_dataset=args.hf_dataset, split=args.split, **options)
    val = open_source(args.val, **options) if args.val else None
    try:
        meta = prepare_sources(
            train,
            args.out,
            val=val,
            val_fraction=args.val_fraction,
            seed=args.seed,
            tokenizer=tokenizer,
            bpe_vocab_size=args.bpe_vocab_size,
        )
    except KeyboardInterrupt:
        print(
            f"hookloop prepare: interrupted; nothing was written to {args.out} "
            "(the partial output was removed)",
            file=sys.stderr,
        )
        return 130
    print(
        f"prepared {args.out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} "
        f"validation tokens ({meta['train_documents']:,} and {meta['val_documents']:,} "
        f"documents), {meta['tokenizer']} vocabulary of {meta['vocab_size']} "
        f"({meta['dtype']}), from {len(meta['source'])} file(s)"
    )
    print(f"train on it: {command_line('train', '--set', f'data.path={args.out}')}")
    return 0


EXAMPLE_BYTES = 1_000_000
"""Size of `--example-text`'s text: about tiny Shakespeare's."""


def _write_example_text(path: Path) -> int:
    """Write the example text to `path` (never over an existing file) and say what next."""
    from hookloop.checkpoint.atomic import replace_file
    from hookloop.errors import ConfigError
    from hookloop.lm.corpus import stdlib_texts

    if path.exists() or path.is_symlink():
        raise ConfigError(f"--example-text {path} exists; nothing was written; choose a new name")
    if not path.parent.is_dir():
        raise ConfigError(f"--example-text {path}: folder {path.parent} does not exist")
    train, val, files = stdlib_texts(EXAMPLE_BYTES)
    text = f"{train}\n{val}\n"
    replace_file(path, text.encode("ascii"))
    print(
        f"wrote {path}: {len(text):,} characters of Python source from {len(files)} files of "
        "this machine's standard library"
    )
    print(f"prepare it: {command_line('prepare', str(path), '--out', 'data/example')}")
    return 0
