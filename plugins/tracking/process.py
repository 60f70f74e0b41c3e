"""The tracker process: where the `mlflow` and `wandb` plugins make every tracker call.

Not a plugin: no entry point. Tracker libraries run a lot of Python per logged value
(MLflow: SQLAlchemy inserts; W&B: protobuf records), about a millisecond per step on the
trivial benchmark model. On a thread of the training process that work holds the
interpreter lock the training loop needs, so every step waits for it. Here it runs in a
child process, `python -m hookloop.plugins.tracking.process`, which imports neither torch nor
hookloop's engine; the training process writes one JSON line per batch of steps to its stdin
(`hookloop.plugins.tracking.link`).

Messages are JSON objects, one a line. To the child: `open` (the backend class and its
options, the run id to resume or null, params, tags, the environment), `rows`, `finish`
(status, artifact paths). From the child: `opened` (the run id), `error` (one line; the child
then exits), `finished`.

A child serves one run at a time; after a clean finish it waits for the next, so a later
`fit()` in the same process does not import the tracker again. It ignores SIGINT and
SIGTERM (the training process ends its run: Ctrl-C is recorded as KILLED). When the training
process dies (its stdin closes), it logs what it was already given, leaves the run to be
resumed (`TrackerBackend.abandon`) and exits; a call that hangs is cut short `timeout`
seconds after the parent died. While a run is open it holds `<run_dir>/.<tracker>.lock`
(`hookloop.runlock.lock_file`; the kernel lets it go however the process exits), which a
resumed run takes first: a resume never reads the tracker's history while a killed start's
tracker process is still writing it (W&B flushes the last logged step as it ends), so no
step is logged twice.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from hookloop.plugins.tracking.backend import TrackerBackend, TrackerRow
from hookloop.runlock import lock_file, unlock_file

__all__ = ["PRIVATE_ENV", "main", "new_rows"]

PRIVATE_ENV = ("WANDB_SERVICE",)
"""Variables a tracker process never inherits: W&B's service token would attach the child
to a parent's W&B service, which outlives a killed run and refuses its resume ("run ID in
use"); each tracker process starts a service of its own, which dies with it."""


def new_rows(rows: list[TrackerRow], last: dict[str, int]) -> list[TrackerRow]:
    """The values of `rows` the run does not hold yet (above `last[key]` and `last["*"]`);
    advances `last` past them."""
    floor = last.get("*", -1)
    kept = [(s, {k: x for k, x in v.items() if s > max(last.get(k, -1), floor)}) for s, v in rows]
    kept = [(s, v) for s, v in kept if v]
    for s, v in kept:
        last.update(dict.fromkeys(v, s))
    return kept


# --- the child ---------------------------------------------------------------------------


def main() -> None:
    """Serve runs from stdin until it closes (the training process ended or died)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out, sys.stdout = sys.stdout, sys.stderr  # a library's print must not corrupt replies
    watchdog = _Watchdog(os.getppid())
    backend: TrackerBackend | None = None
    lock: int | None = None  # the run's lock file, held while a run is open
    last: dict[str, int] = {}
    try:
        for line in sys.stdin:
            msg = json.loads(line)
            if msg["op"] == "open":
                watchdog.grace = msg["timeout"]
                _set_environment(msg["env"])
                path, timeout = msg["lock"], msg["timeout"]
                if msg["run_id"] and path:  # an earlier, killed start may still be writing
                    lock = lock_file(path, timeout=timeout)
                module, _, cls = msg["backend"].partition(":")
                backend = getattr(importlib.import_module(module), cls)(**msg["options"])
                run_id, last = backend.open(msg["run_id"])
                if lock is None and path:
                    lock = lock_file(path, timeout=timeout)
                _reply(out, opened=run_id)
                backend.log_params(msg["params"], msg["tags"])
            elif backend is not None and msg["op"] == "rows":
                if rows := new_rows([(s, v) for s, v in msg["rows"]], last):
                    backend.log_rows(rows)
            elif backend is not None and msg["op"] == "finish":
                backend.finish(msg["status"], [Path(p) for p in msg["artifacts"]])
                backend = None
                if lock is not None:
                    unlock_file(lock)
                    lock = None
                _reply(out, finished=True)
        if backend is not None:  # the training process died: leave the run resumable
            backend.abandon()
    except Exception as exc:  # reported to the plugin, which is then disabled
        _reply(out, error=f"{type(exc).__name__}: {exc}".splitlines()[0][:2000])


class _Watchdog:
    """Ends the process `grace` seconds after its parent died, even inside a tracker call
    (stdin closing normally ends it sooner)."""

    def __init__(self, parent: int) -> None:
        self.parent, self.grace = parent, 60.0
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while os.getppid() == self.parent:
            time.sleep(1.0)
        time.sleep(self.grace)
        os._exit(1)


def _set_environment(env: dict[str, str]) -> None:
    kept = {k: os.environ[k] for k in PRIVATE_ENV if k in os.environ}
    os.environ.clear()
    os.environ.update({k: v for k, v in env.items() if k not in PRIVATE_ENV})
    os.environ.update(kept)


def _reply(out: IO[str], **message: Any) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
