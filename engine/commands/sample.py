"""Generate text from a trained run (by default the latest run under runs/, from the
checkpoint its `latest` pointer names).

Examples:
    hookloop sample
    hookloop sample --prompt "def " --max-new-tokens 300 --temperature 0.8 --top-k 40
    hookloop sample --run runs/20260101-120000 --checkpoint step-00001000 --temperature 0

Generation stops early at the tokenizer's end-of-text token (byte and BPE data prepared
from documents), which marks the end of a document.
"""

from __future__ import annotations

import argparse

MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-6, 1e6
"""The range of a non-zero `--temperature` (smaller ones overflow the logits: use 0)."""
MAX_NEW_TOKENS = 10**7
"""The most tokens one `hookloop sample` generates."""


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """`--run`, `--runs` and `--checkpoint`: which trained weights a command reads."""
    parser.add_argument(
        "--run",
        "--run-dir",  # as `train` spells it; under torchrun only this spelling works
        dest="run_dir",
        metavar="DIR",
        help="run directory (default: the latest under --runs)",
    )
    add_runs_argument(parser)
    parser.add_argument(
        "--checkpoint",
        metavar="NAME",
        help="checkpoint directory name or path (default: the run's latest)",
    )


def add_runs_argument(parser: argparse.ArgumentParser) -> None:
    """`--runs BASE`: where a command looks for the latest run."""
    parser.add_argument(
        "--runs", metavar="BASE", default="runs", help="where runs live (default: runs)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `sample` options."""
    add_run_arguments(parser)
    parser.add_argument("--prompt", default=None, help="text to continue (default: a newline)")
    parser.add_argument("--max-new-tokens", type=int, default=400, metavar="N")
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help="0 = greedy; higher = more varied (default: 0.8)",
    )
    parser.add_argument("--top-k", type=int, default=None, metavar="K")
    parser.add_argument("--top-p", type=float, default=None, metavar="P")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same text (default: 0)")


def check_sampling(args: argparse.Namespace) -> None:
    """Refuse sampling options out of range (NaN and infinity included) before loading."""
    from hookloop.errors import ConfigError

    t = args.temperature
    if not (t == 0 or MIN_TEMPERATURE <= t <= MAX_TEMPERATURE):  # False for NaN too
        raise ConfigError(
            f"--temperature must be 0 (greedy) or between {MIN_TEMPERATURE} and "
            f"{MAX_TEMPERATURE}, got {t}"
        )
    if not 0 <= args.max_new_tokens <= MAX_NEW_TOKENS:
        raise ConfigError(
            f"--max-new-tokens must be between 0 and {MAX_NEW_TOKENS}, got {args.max_new_tokens}"
        )
    if args.top_k is not None and not 1 <= args.top_k < 2**31:
        raise ConfigError(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], got {args.top_p}")
    if not 0 <= args.seed < 2**63:
        raise ConfigError(f"--seed must be between 0 and 2**63 - 1, got {args.seed}")


def run(args: argparse.Namespace) -> int:
    """Load the run's model and print the prompt and its continuation."""
    from hookloop.errors import CheckpointError, ConfigError, DataError

    check_sampling(args)  # before torch is imported: a quick refusal
    from hookloop.lm.recipe import latest_run_dir, load_trained, set_threads

    run_dir = args.run_dir or latest_run_dir(args.runs)
    if run_dir is None:
        raise CheckpointError(
            f"no runs under {args.runs}/; train one with `hookloop train` or pass --run DIR"
        )
    model, tokenizer, config, _ = load_trained(run_dir, args.checkpoint)
    set_threads(config["training"]["threads"])
    if args.prompt is None:  # a newline, or id 0 for a vocabulary without one
        try:
            ids = tokenizer.encode("\n").tolist()
        except DataError:
            ids = [0]
    else:
        ids = tokenizer.encode(args.prompt).tolist()
    if not ids:
        raise ConfigError("--prompt encodes to no tokens; give at least one character")
    out = model.generate(
        ids,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_id=getattr(tokenizer, "eot_id", None),  # a document ends at end-of-text
    )
    print(tokenizer.decode(out))
    return 0
