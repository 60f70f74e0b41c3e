"""The `hookloop` command line: `hookloop COMMAND [options]`.

User mistakes (`HookloopError`), and a read-only, full or forbidden place to write (an
`OSError` of those kinds), print one line and exit with status 2; set `HOOKLOOP_DEBUG=1` to
see their traceback. Internal errors keep their traceback. A reader that closes the pipe
early (`hookloop plugins --order | head -3`) ends the command quietly with status 141
(128 + SIGPIPE), as shell tools do.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from hookloop.errors import HookloopError

__all__ = ["add_config_arguments", "build_parser", "command_line", "main"]

_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}
"""OS errors that mean a read-only, full or forbidden place: a one-line message, no traceback."""

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


def command_line(*words: str | os.PathLike[str]) -> str:
    """A `hookloop ...` command line that works when pasted into the shell it ran from.

    `hookloop` itself when that name finds this installation on PATH; else the path it was
    started by (`.venv/bin/hookloop` before the venv is activated) or `python -m hookloop`.
    Each word is quoted for the shell.
    """
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if Path(argv0).name == "__main__.py" or not argv0:
        prefix = [sys.executable, "-m", "hookloop"]
    elif (found := shutil.which("hookloop")) and Path(found).resolve() == Path(argv0).resolve():
        prefix = ["hookloop"]
    else:
        prefix = [argv0 if os.sep in argv0 else "hookloop"]
    return shlex.join([*prefix, *(os.fspath(w) for w in words)])


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
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="the lowest level of log line shown (default: info; debug adds each "
        "plugin's cost per step)",
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


BROKEN_PIPE_STATUS = 128 + 13
"""Exit status when stdout's reader went away: 128 + SIGPIPE, what a shell reports."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `hookloop` command and return its exit status.

    When whoever reads stdout closes the pipe early (`| head`), the command stops quietly
    with `BROKEN_PIPE_STATUS`: stdout is pointed at `os.devnull`, so the interpreter's own
    flush at exit cannot raise `BrokenPipeError` a second time (the recipe in Python's
    `signal` documentation). Output is flushed here, not at exit, so the error is seen here.
    """
    try:
        status = _run(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE_STATUS
    return status


def _silence_stdout() -> None:
    """Point file descriptor 1 at `os.devnull`, so nothing more is written to a closed pipe."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a test harness: nothing to do
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _run(argv: Sequence[str] | None) -> int:
    """Parse `argv`, run its command and map user mistakes to one line and status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from hookloop.logs import configure_logging

    # Under torchrun only rank 0 logs progress; every rank still logs warnings and errors.
    level = args.log_level if os.environ.get("RANK", "0") == "0" else "warning"
    configure_logging(args.log_format, level=level)
    try:
        return int(args.run(args) or 0)
    except HookloopError as exc:
        if os.environ.get("HOOKLOOP_DEBUG"):
            raise
        print(f"hookloop {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        raise  # the reader left: `main` ends quietly
    except OSError as exc:
        # The machine, not hookloop: a read-only or full disk, a file without permission.
        if exc.errno not in _ENVIRONMENT_ERRNOS or os.environ.get("HOOKLOOP_DEBUG"):
            raise
        where = f" {exc.filename}" if exc.filename else ""
        print(
            f"hookloop {args.command}: error: cannot use{where}: {exc.strerror}; make it "
            "writable (or free space), or choose another directory",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"hookloop {args.command}: interrupted", file=sys.stderr)
        return 130


def _version() -> str:
    from hookloop import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())
