"""Export a trained model for another ecosystem. `--format hf` writes a GPT-2 directory that
`transformers.AutoModelForCausalLM.from_pretrained(DIR)` loads, with the tokenizer:

    hookloop export runs/20260101-120000 --format hf --out gpt2-export
    hookloop export runs/20260101-120000/checkpoints/step-00000800 --format hf --out gpt2-export

RUN_OR_CHECKPOINT is a run directory (its latest checkpoint that verifies) or a checkpoint
directory. DIR must be new, empty or an earlier export (see `hookloop.lm.export_target`: a
run, a checkpoint, prepared data or any other non-empty directory is refused before anything
is written). It gets config.json, model.safetensors, hookloop_tokenizer.json and, for byte
and bpe tokenizers, tokenizer.json + tokenizer_config.json for AutoTokenizer. See the
guide's Interoperability page.
"""

from __future__ import annotations

import argparse

FORMATS = ("hf",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `export` options."""
    parser.add_argument("source", metavar="RUN_OR_CHECKPOINT", help="a run or checkpoint directory")
    parser.add_argument(
        "--format", choices=FORMATS, default="hf", help="hf: Hugging Face GPT-2 (default)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="the directory to write")


def run(args: argparse.Namespace) -> int:
    """Verify the checkpoint, convert it and say what was written."""
    from pathlib import Path

    from hookloop.checkpoint import MODEL_FILE, STATE_FILE, read_checkpoint
    from hookloop.errors import CheckpointError
    from hookloop.lm.config import default_config
    from hookloop.lm.export_target import check_export_target
    from hookloop.lm.hf import export_hf
    from hookloop.lm.recipe import checkpoint_dir
    from hookloop.lm.tokenizers import load_tokenizer

    source = Path(args.source)
    if (source / STATE_FILE).is_file():
        checkpoint, run_dir = source, source.parent.parent
    elif source.is_dir():
        checkpoint, run_dir = checkpoint_dir(source), source
    else:
        raise CheckpointError(
            f"{source} is neither a run directory nor a checkpoint directory (no {STATE_FILE})"
        )
    tokenizer_file = run_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise CheckpointError(f"{run_dir} has no tokenizer.json; export needs the run directory")
    out = Path(args.out)
    check_export_target(out, run_dir=run_dir)  # before the checkpoint is read or anything written
    state, files = read_checkpoint(checkpoint)  # verified against its checksums
    tensors = dict(files[MODEL_FILE])
    for alias, stored in state["model"].get("aliases", {}).items():
        tensors[alias] = tensors[stored]
    model_config = {**default_config()["model"], **state.get("config", {}).get("model", {})}
    written = export_hf(tensors, model_config, load_tokenizer(tokenizer_file), tokenizer_file, out)
    print(f"exported {checkpoint} as a Hugging Face GPT-2 model to {out}:")
    for path in written:
        print(f"  {path.name}")
    print(f"load it with: transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0
