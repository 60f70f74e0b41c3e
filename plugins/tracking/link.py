"""The training process's end of a tracker process (`hookloop.plugins.tracking.process`).

Not a plugin: no entry point. `TrackerLink` is one run in a tracker process: it starts the
process (or reuses an idle one), sends it the run's messages and reads its replies. Nothing
here waits during training: messages go to the process's stdin without blocking (a full
pipe keeps the rest for the next message), and one thread, asleep but for the process's few
replies, reads them. Only the end of a run waits, at most `timeout` seconds.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hookloop.plugins.tracking.backend import TrackerRow
from hookloop.plugins.tracking.process import PRIVATE_ENV

__all__ = ["TrackerLink"]


class TrackerLink:
    """One run in a tracker process, seen from the training process.

    Args:
        name: The plugin's name (for messages).
        backend: `"module:Class"` of the `TrackerBackend`.
        options: Its keyword arguments (JSON).
        run_id: The run to continue, or None for a new one.
        params: The flattened config.
        tags: The run's tags.
        run_dir: Where the run's lock file goes (see `tracking.process`); None: no lock.
        timeout: Seconds the tracker process waits for that lock, and for its calls after
            the training process died.
    """

    def __init__(
        self,
        name: str,
        backend: str,
        options: dict[str, Any],
        run_id: str | None,
        params: dict[str, str],
        tags: dict[str, str],
        *,
        run_dir: Path | None,
        timeout: float,
    ) -> None:
        self.name = name
        self.run_id: str | None = None
        self.error: str | None = None
        self._reported = False
        self._opened = threading.Event()
        self._finished = threading.Event()
        self._child = _Child.acquire(self)
        env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}
        self._child.send(
            {
                "op": "open",
                "backend": backend,
                "options": options,
                "run_id": run_id,
                "params": params,
                "tags": tags,
                "env": env,
                "lock": None if run_dir is None else str(run_dir / f".{name}.lock"),
                "timeout": timeout,
            }
        )

    def send_rows(self, rows: list[TrackerRow]) -> None:
        """Hand rows to the tracker process (never waits)."""
        self._child.send({"op": "rows", "rows": rows})

    def raise_error(self) -> None:
        """Raise the tracker's error once, in the caller's thread (the plugin's hook)."""
        if self.error is not None and not self._reported:
            self._reported = True
            from hookloop import PluginError

            raise PluginError(f"{self.name}: {self.error}")

    def wait_for_run(self, timeout: float) -> str | None:
        """The run id, once the run is open (waits at most `timeout` seconds)."""
        self._opened.wait(timeout)
        self.raise_error()
        return self.run_id

    def close(self, status: str, artifacts: list[Path], timeout: float) -> None:
        """End the run after what was sent, waiting at most `timeout` seconds; the process
        then serves the next run (or is stopped, when the run did not end cleanly).

        Raises:
            PluginError: the tracker failed, or did not finish within `timeout`.
        """
        deadline = time.monotonic() + timeout
        self._child.send({"op": "finish", "status": status, "artifacts": list(map(str, artifacts))})
        self._child.flush(timeout)
        if self._finished.wait(max(deadline - time.monotonic(), 0)) and self.error is None:
            _Child.release(self._child)
        else:
            self.abandon()
            if self.error is None:
                self.error = (
                    f"the tracker did not finish within {timeout:g}s (option timeout); "
                    "what it had not sent yet is lost"
                )
        self.raise_error()

    def abandon(self) -> None:
        """Stop the tracker process where it is (the run stays as the tracker has it)."""
        self._child.stop()

    # called from the child's reader thread
    def message(self, message: dict[str, Any]) -> None:
        if "opened" in message:
            self.run_id = message["opened"]
            self._opened.set()
        if "error" in message:
            self.error = self.error or message["error"]
        if "finished" in message:
            self._finished.set()

    def exited(self, code: int | None) -> None:
        if not self._finished.is_set():
            self.error = self.error or f"the tracker process exited (code {code})"
        self._opened.set()
        self._finished.set()


class _Child:
    """A tracker process: messages are written to it without blocking (what a full pipe
    does not take now goes with the next message), and a thread reads its rare replies."""

    _idle: list[_Child] = []
    _lock = threading.Lock()

    @classmethod
    def acquire(cls, link: TrackerLink) -> _Child:
        with cls._lock:
            while cls._idle:
                child = cls._idle.pop()
                if child.proc.poll() is None:
                    child.link = link
                    return child
        return cls(link)

    @classmethod
    def release(cls, child: _Child) -> None:
        with cls._lock:
            cls._idle.append(child)

    def __init__(self, link: TrackerLink) -> None:
        self.link = link
        env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hookloop.plugins.tracking.process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert self.proc.stdin is not None
        self._fd = self.proc.stdin.fileno()
        os.set_blocking(self._fd, False)
        self._unsent = bytearray()
        threading.Thread(target=self._read, name="hookloop-tracker", daemon=True).start()

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message and write what the pipe takes now (never waits)."""
        self._unsent += json.dumps(message).encode() + b"\n"
        self._write()

    def flush(self, timeout: float) -> bool:
        """Write everything queued, waiting at most `timeout` seconds; True when done."""
        deadline = time.monotonic() + timeout
        while self._write() and (left := deadline - time.monotonic()) > 0:
            select.select([], [self._fd], [], left)
        return not self._unsent

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def _write(self) -> bool:
        """Write what the pipe takes; True when some is left."""
        while self._unsent:
            try:
                del self._unsent[: os.write(self._fd, self._unsent)]
            except BlockingIOError:
                return True
            except OSError:  # the child is gone: the reader reports it
                self._unsent.clear()
        return False

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.link.message(json.loads(line))
        self.link.exited(self.proc.wait())


def _forget_tracker_processes() -> None:
    """In a forked child: the parent's tracker processes are the parent's, not to reuse."""
    _Child._idle = []
    _Child._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_tracker_processes)
