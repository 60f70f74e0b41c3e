"""Check a configured run before training it: the "loss doesn't decrease" checklist, run.

Builds the run the config describes (model, optimizer, data, plugins), takes a few real
training batches and prints one line per check, PASS / WARN / FAIL with the number behind
it: batch shapes and dtypes, token ids within the vocabulary, targets shifted by one,
logits finite and of sane range, initial loss close to ln(vocab), every trainable parameter
gets a gradient, frozen parameters, gradient norm range, a non-zero lr, the schedule's
warmup and decay, one optimizer step changes the weights, no leak across the causal mask,
and the model can overfit one batch; then any checks plugins add. Nothing is written and
the model is not trained. Exit status 1 when a check fails.

Examples:
    hookloop doctor
    hookloop doctor --set model.n_layers=2 --set data.batch_size=8
    hookloop doctor -c run.toml --overfit-steps 100
"""

from __future__ import annotations

import argparse
import itertools

from hookloop.cli import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `doctor` options."""
    add_config_arguments(parser)
    parser.add_argument(
        "--batches",
        type=int,
        default=3,
        metavar="N",
        help="training batches to examine (default: 3)",
    )
    parser.add_argument(
        "--overfit-steps",
        type=int,
        default=150,
        metavar="N",
        help="steps the overfit-one-batch check may take (default: 150)",
    )
    parser.add_argument(
        "--overfit-fraction",
        type=float,
        default=0.5,
        metavar="F",
        help="overfitting passes below this fraction of the first loss (default: 0.5)",
    )


def run(args: argparse.Namespace) -> int:
    """Build the configured run, run every check on real batches, print the checklist."""
    from hookloop.errors import ConfigError
    from hookloop.lm.config import config_from_args
    from hookloop.lm.doctor import FAIL, diagnose, format_findings
    from hookloop.lm.recipe import build_run

    if args.batches < 1 or args.overfit_steps < 1 or not 0 < args.overfit_fraction < 1:
        raise ConfigError(
            "doctor: --batches and --overfit-steps must be >= 1 and --overfit-fraction in (0, 1)"
        )
    built = build_run(config_from_args(args), None)
    engine = built.engine
    data = engine.train_data
    source = data.iter_epoch(0, 0) if hasattr(data, "iter_epoch") else iter(data)
    batches = list(itertools.islice(source, args.batches))
    findings = diagnose(
        engine,
        batches,
        vocab_size=getattr(engine.model, "vocab_size", None),
        max_steps=built.max_steps,
        overfit_steps=args.overfit_steps,
        overfit_fraction=args.overfit_fraction,
    )
    print(format_findings(findings))
    return 1 if any(f.status == FAIL for f in findings) else 0
