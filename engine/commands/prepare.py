"""Tokenize text once into a prepared data directory: train.bin and val.bin (flat token ids,
uint16 when the vocabulary fits, else uint32), tokenizer.json and meta.json.

The vocabulary is built once from all the text and shared by both splits (and, through the
run directory, by sampling). Point training at the result with `--set data.path=DIR`.

Examples:
    hookloop prepare input.txt --out data/mytext
    hookloop prepare notes/ --glob "*.md" --tokenizer byte --out data/notes
    hookloop prepare train.txt --val val.txt --tokenizer bpe --bpe-vocab-size 2048 --out data/bpe
"""

from __future__ import annotations

import argparse

from hookloop.cli import command_line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `prepare` options."""
    parser.add_argument(
        "source",
        metavar="TEXT_FILE_OR_DIR",
        help="a UTF-8 text file, or a directory of them (read in sorted order)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to create")
    parser.add_argument("--tokenizer", choices=("char", "byte", "bpe"), default="char")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="the last fraction F of the text is validation (default: 0.1)",
    )
    parser.add_argument(
        "--val",
        metavar="FILE_OR_DIR",
        help="separate validation text (then --val-fraction is not used)",
    )
    parser.add_argument(
        "--glob", default="*", help="file pattern inside directories (default: every file)"
    )
    parser.add_argument(
        "--bpe-vocab-size",
        type=int,
        default=4096,
        metavar="N",
        help="vocabulary size of a trained BPE (default: 4096)",
    )


def run(args: argparse.Namespace) -> int:
    """Read, split, tokenize and write; print a summary."""
    from hookloop.errors import ConfigError
    from hookloop.lm.prepare import prepare_texts, read_text_sources, split_text

    if args.bpe_vocab_size < 257:
        raise ConfigError(f"--bpe-vocab-size must be at least 257, got {args.bpe_vocab_size}")
    text, files = read_text_sources(args.source, glob=args.glob)
    if args.val:
        train, (val, val_files) = text, read_text_sources(args.val, glob=args.glob)
        files += val_files
    else:
        train, val = split_text(text, args.val_fraction)
    meta = prepare_texts(
        train,
        val,
        args.out,
        tokenizer=args.tokenizer,
        bpe_vocab_size=args.bpe_vocab_size,
        source=files,
    )
    print(
        f"prepared {args.out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} "
        f"validation tokens, {meta['tokenizer']} vocabulary of {meta['vocab_size']} "
        f"({meta['dtype']}), from {len(files)} file(s)"
    )
    print(f"train on it: {command_line('train', '--set', f'data.path={args.out}')}")
    return 0
