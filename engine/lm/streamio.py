"""The plumbing of streaming prepare: token files appended on a background thread, and a
progress bar that shows only on a terminal."""

from __future__ import annotations

import hashlib
import os
import queue
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from hookloop.lm.sources import Source
    from hookloop.lm.tokenizers import Tokenizer

__all__ = ["Background", "Progress", "TokenWriter", "token_dtype"]


def token_dtype(vocab_size: int) -> str:
    """`uint16` when every id fits in it, else `uint32`."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


class TokenWriter:
    """Appends ids to one token file, hashing them on the way."""

    def __init__(self, path: Path, tok: Tokenizer, background: Background) -> None:
        self.path = path
        self.dtype = np.dtype(token_dtype(tok.vocab_size)).newbyteorder("<")
        self.file = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.sha = hashlib.sha256()
        self.tokens = self.chars = self.documents = 0
        self.background = background

    def write(self, parts: list[np.ndarray]) -> None:
        """Append the ids of `parts`, one after the other: joined into this file's dtype
        here, written and hashed on the background thread (which balances the work of the
        two threads for the byte tokenizer, whose ids need no other work)."""
        if len(parts) == 1:
            data = np.ascontiguousarray(parts[0], dtype=self.dtype)
        else:
            data = np.concatenate(parts, dtype=self.dtype, casting="unsafe")
        self.tokens += data.size
        self.background.put(self._append, data)

    def _append(self, data: np.ndarray) -> None:
        self.file.write(data.data)
        self.sha.update(data.data)

    def close(self) -> None:
        """Close the file (after the background thread wrote everything)."""
        self.file.close()


class Background:
    """One thread that runs queued calls in order: writing and hashing (both release the
    GIL) overlap with reading and tokenizing. At most `depth` calls wait, so memory stays
    bounded; an error on the thread is raised by the next `put` or by `join`."""

    def __init__(self, depth: int = 2) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="prepare-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    item[0](*item[1:])
                except BaseException as exc:  # handed to the main thread
                    self.error = exc

    def put(self, fn: Any, *args: Any) -> None:
        """Queue `fn(*args)`; raises an error the thread met earlier."""
        self._raise()
        self.queue.put((fn, *args))

    def join(self) -> None:
        """Wait for every queued call, stop the thread, raise its error if any."""
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error


class Progress:
    """A tqdm bar of bytes read (MB/s, ETA), on a terminal only; silent in CI and pipes."""

    def __init__(self, total: int, enabled: bool | None) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty() and not os.environ.get("CI")
        self.total, self.bar, self.seen = total, None, {}
        if enabled:
            try:
                import tqdm  # noqa: F401
            except ImportError:
                enabled = False
        self.enabled = enabled

    def stage(self, name: str) -> Progress:
        """Start a new bar (one pass over the data) named `name`."""
        self.close()
        self.seen = {}
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total or None, desc=name, unit="B", unit_scale=True, leave=False
            )
        return self

    def update(self, source: Source) -> None:
        """Advance by what `source` read since the last update."""
        if self.bar is not None:
            done = source.bytes_read
            self.bar.update(done - self.seen.get(id(source), 0))
            self.seen[id(source)] = done

    def close(self) -> None:
        """Close the current bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
