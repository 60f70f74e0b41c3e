"""A fork server for `python -m hookloop` in tests: `python tests/cli_server.py`.

It imports what every command imports (torch, the command modules, the recipe, the built-in
plugins) once, then forks a fresh process per request, so a test's command costs the command
itself, not seconds of interpreter start-up and imports. Each child is a real process of its
own: its own session (process group), working directory, environment, stdout and stderr files
and exit status, and it exits as the interpreter would (non-daemon threads joined, atexit
handlers run, an uncaught exception printed with its traceback and exit status 1). What it does
not cover is the start-up itself (`python -m` finding the package, imports that the command
forgets): the tests that run real `python -m hookloop` processes do (`real=True`).

The protocol is JSON lines. Request on stdin: `{"id", "argv", "cwd", "env", "stdout",
"stderr"}` (two file paths, possibly the same); replies on stdout: `{"ready": true}` once the
imports are done, `{"id", "pid"}` when the child started and `{"pid", "returncode"}` (negative:
killed by that signal, as `subprocess.Popen.returncode`) when it ended. End of stdin: every
child still running is killed with its group and the server exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys


def preload() -> None:
    """Import what the commands import (none of it starts threads that a fork would lose)."""
    import importlib
    from importlib.metadata import entry_points

    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401  (building an optimizer imports it)

    from hookloop.cli import build_parser

    build_parser()  # every command module
    for module in ("hookloop.lm.recipe", "hookloop.lm.prepare", "hookloop.checkpoint"):
        importlib.import_module(module)
    from hookloop.plotting import pyplot

    pyplot()  # matplotlib on Agg, its font cache read (or built) once
    for ep in entry_points(group="hookloop"):
        if ep.module.startswith("hookloop."):  # the built-ins, not third-party plugins
            importlib.import_module(ep.module)


def child(request: dict, protocol: tuple[int, int]) -> None:
    """Become `python -m hookloop ARGV` as the request describes; never returns."""
    code = 1
    try:
        for fd in protocol:
            os.close(fd)
        os.setsid()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = out
        if request["stderr"] != request["stdout"]:
            err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        # as `python -m` sets it up: the working directory first, then PYTHONPATH
        extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:1] = [os.getcwd(), *extra]
        sys.argv[1:] = request["argv"]
        if os.environ.get("PYTHONFAULTHANDLER"):
            import faulthandler

            faulthandler.enable()
        code = run()
        finish()
    finally:
        os._exit(code)


def run() -> int:
    """Run the hookloop package as `__main__`; the exit status the interpreter would give."""
    import runpy

    try:
        runpy.run_module("hookloop", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return (exc.code or 0) & 0xFF
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:
        sys.excepthook(*sys.exc_info())
        return 1
    return 0


def finish() -> None:
    """What the interpreter does at exit: join non-daemon threads, run atexit, flush."""
    import atexit
    import threading

    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def serve() -> None:
    """Read requests, fork children, report their pids and exit statuses."""
    # The protocol keeps its own descriptors; stray output of the server goes nowhere.
    inbox, outbox = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    sys.path[0] = os.getcwd()  # not tests/: only what an installed hookloop sees

    def reply(message: dict) -> None:
        os.write(outbox, (json.dumps(message) + "\n").encode())

    preload()
    reply({"ready": True})
    live: set[int] = set()
    pending = b""
    while True:
        readable, _, _ = select.select([inbox], [], [], 0.02 if live else None)
        if readable:
            data = os.read(inbox, 1 << 16)
            if not data:  # the test session ended
                for pid in live:
                    with contextlib.suppress(OSError):
                        os.killpg(pid, signal.SIGKILL)
                os._exit(0)  # nothing to clean up: no interpreter shutdown with torch loaded
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    child(request, (inbox, outbox))
                live.add(pid)
                reply({"id": request["id"], "pid": pid})
        while live:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            live.discard(pid)
            reply({"pid": pid, "returncode": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    serve()
