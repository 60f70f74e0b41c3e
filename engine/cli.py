"""The `hookloop` command line: `hookloop COMMAND [options]`.

User mistakes (`HookloopError`) print one line and exit with status 2; set
`HOOKLOOP_DEBUG=1` to see their traceback. Internal errors keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from hookloop.errors import HookloopError

__all__ = ["add_config_arguments", "build_parser", "main"]

# name -> (module, one-line help). Modules are imported to build the parser, so they must
# not import torch at module level.
COMMANDS: dict[str, tuple[str, str]] = {
    "plugins": ("hookloop.commands.plugins", "list installed plugins and their hook order"),
    "prepare": ("hookloop.commands.prepare", "tokenize text into train/val token files"),
    "train": ("hookloop.commands.train", "train a language model (no arguments: the default)"),
    "sample": ("hookloop.commands.sample", "generate text from a trained run"),
    "eval": ("hookloop.commands.eval", "evaluate a checkpoint on the validation split"),
    "schedule": (
        "hookloop.commands.schedule",
        "print and plot the learning-rate curve of the configured run",
    ),
    "plot": (
        "hookloop.commands.plot",
        "plot a run's loss, learning rate and gradient norm to a PNG",
    ),
    "export": (
        "hookloop.commands.export",
        "export a trained model as a Hugging Face GPT-2 directory",
    ),
    "doctor": ("hookloop.commands.doctor", "check a configured run before training it"),
    "verify-resume": (
        "hookloop.commands.verify_resume",
        "check that stopping and resuming a run changes nothing",
    ),
}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every command that builds a run accepts: config file, overrides, plugins."""
    parser.add_argument("-c", "--config", metavar="FILE", help="a TOML config file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set model.n_layers=6 (repeatable)",
    )
    parser.add_argument(
        "-p",
        dest="plugin_flags",
        action="append",
        default=[],
        metavar="[no:]NAME",
        help="enable plugin NAME, or disable it with no:NAME (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="hookloop", description="Train, sample and inspect small language models."
    )
    parser.add_argument("--version", action="version", version=f"hookloop {_version()}")
    parser.add_argument(
        "--log-format",
        choices=("console", "json"),
        default="console",
        help="log lines as human key=value text (default) or JSON lines",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(
            name,
            help=help_text,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `hookloop` command and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from hookloop.logs import configure_logging

    configure_logging(args.log_format)
    try:
        return int(args.run(args) or 0)
    except HookloopError as exc:
        if os.environ.get("HOOKLOOP_DEBUG"):
            raise
        print(f"hookloop {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hookloop {args.command}: interrupted", file=sys.stderr)
        return 130


def _version() -> str:
    from hookloop import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())
