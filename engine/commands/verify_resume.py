"""Check that stopping and resuming your run changes nothing: N steps straight versus N/2
steps, a checkpoint, a new engine (random state scrambled) resumed from it, and N/2 more.

It compares the loss of every step and every parameter, bit for bit, and prints equal or
the first step (and tensor) that differs; the exit status is 1 when anything differs. The
configured plugins take part, so their checkpoint state is checked too. Runs go to a
temporary directory that is removed afterwards.

Examples:
    hookloop verify-resume
    hookloop verify-resume -c run.toml --steps 40
    hookloop verify-resume --set model.n_layers=2 --set data.batch_size=8
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from hookloop.cli import add_config_arguments
from hookloop.hookspecs import hookimpl


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `verify-resume` options."""
    add_config_arguments(parser)
    parser.add_argument(
        "--steps",
        type=int,
        default=20,
        metavar="N",
        help="optimizer steps of the straight run (default: 20; at least 2)",
    )


class _Recorder:
    """Records each step's loss; asks the loop to stop after step `stop_at`."""

    name = "verify_resume"

    def __init__(self, stop_at: int | None = None) -> None:
        self.losses: dict[int, float] = {}
        self.stop_at = stop_at

    @hookimpl
    def after_step(self, state: Any) -> None:
        self.losses[state.step] = state.loss.item()
        if state.step == self.stop_at:
            state.request_stop("verify-resume: stop halfway")


def _train(
    config: dict[str, Any],
    run_dir: Path,
    steps: int,
    *,
    stop_at: int | None = None,
    resume_from: Path | None = None,
) -> tuple[Any, _Recorder]:
    from hookloop.checkpoint import load_checkpoint
    from hookloop.lm.recipe import build_run

    run = build_run(config, run_dir)
    recorder = _Recorder(stop_at)
    run.engine.add_plugin(recorder)
    if resume_from is not None:
        load_checkpoint(run.engine, resume_from)
    run.engine.fit(max_steps=steps)
    return run.engine, recorder


def _scramble_random_state() -> None:
    """What a new process would have: nothing left over from the first half."""
    import random

    import numpy as np
    import torch

    torch.manual_seed(random.SystemRandom().randrange(2**31))
    np.random.seed(random.SystemRandom().randrange(2**31))
    random.seed()


def run(args: argparse.Namespace) -> int:
    """Train straight, then stopped and resumed; compare; 0 when equal, 1 when different."""
    import torch

    from hookloop.checkpoint import checkpoint_name, save_checkpoint
    from hookloop.errors import ConfigError
    from hookloop.lm.config import config_from_args

    if args.steps < 2:
        raise ConfigError(f"--steps must be at least 2, got {args.steps}")
    config = config_from_args(args)
    config["training"]["max_steps"], config["training"]["epochs"] = args.steps, 0
    n, half = args.steps, args.steps // 2
    print(f"verify-resume: {n} steps straight vs {half} + checkpoint + new engine + {n - half}")
    with tempfile.TemporaryDirectory(prefix="hookloop-verify-") as tmp:
        straight, trace_a = _train(config, Path(tmp) / "straight", n)
        first, trace_b = _train(config, Path(tmp) / "resumed", n, stop_at=half)
        path = save_checkpoint(first, Path(tmp) / "verify" / checkpoint_name(half))
        del first
        _scramble_random_state()
        resumed, trace_c = _train(config, Path(tmp) / "resumed", n, resume_from=path)

        losses = {**trace_b.losses, **trace_c.losses}
        differ = [s for s in sorted(trace_a.losses) if losses.get(s) != trace_a.losses[s]]
        if differ:
            s = differ[0]
            print(
                f"  loss trace: DIFFERENT from step {s}: {trace_a.losses[s]!r} straight, "
                f"{losses.get(s)!r} resumed"
            )
        else:
            print(f"  loss trace: equal at all {len(trace_a.losses)} steps")
        a = straight.model.state_dict()
        b = resumed.model.state_dict()
        bad = [k for k in a if not torch.equal(a[k], b[k])]
        if bad:
            worst = max((a[k].float() - b[k].float()).abs().max().item() for k in bad)
            print(
                f"  parameters: DIFFERENT in {len(bad)} of {len(a)} tensors (first {bad[0]}, "
                f"largest difference {worst:.3g})"
            )
        else:
            print(f"  parameters: bitwise equal ({len(a)} tensors)")
    equal = not differ and not bad
    print(
        "result: "
        + (
            "EQUAL: a resumed run is identical to an uninterrupted one"
            if equal
            else "DIFFERENT: stopping and resuming changes this run"
        )
    )
    return 0 if equal else 1
