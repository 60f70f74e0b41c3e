"""Language-model batches read from a flat token file through a memory map.

A token file is a raw array of uint16 or uint32 token ids (`hookloop prepare` writes one per
split). A window of `seq_len + 1` tokens starting at offset `i` gives the inputs
`tokens[i:i+T]` and the targets `tokens[i+1:i+T+1]` (the inputs shifted one to the left).

Two ways to choose windows:

- `sequential`: the `(N-1)//T` non-overlapping windows, window `w` starting at `w*T`;
  optionally visited in a new seeded order each epoch (`shuffle`).
- `random`: `batch_size` offsets drawn uniformly from `[0, N-T-1]` for every batch, as
  nanoGPT samples; an epoch is `batches_per_epoch` batches.

Every epoch's batches are a pure function of `(seed, epoch)`: `iter_epoch(epoch, start)`
rebuilds them from batch `start`, which is how the engine resumes mid-epoch exactly.

Under several processes (`world_size > 1`) `batch_size` is per rank: each batch is first
chosen globally, `world_size * batch_size` windows as one process with that batch size
would choose them, and rank `r` takes windows `[r*B, (r+1)*B)` of it. So 2 ranks with
batch B read exactly the windows 1 rank with batch 2B reads, batch for batch.
Memory stays flat however large the file is: the file is mapped once with `np.memmap`, and
the pages under each window are released right after it is copied, so they never
accumulate in the process (on Linux one window can fault in a 2 MiB page-cache folio).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from hookloop.errors import DataError

__all__ = ["SAMPLING_MODES", "TokenDataset", "check_token_range", "epoch_generator"]

SAMPLING_MODES = ("random", "sequential")
_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)
_CHECK_CHUNK = 1 << 23  # tokens per read when checking the id range (16 MiB of uint16)

Batch = tuple[torch.Tensor, torch.Tensor]


class TokenDataset:
    """Batches of `(inputs, targets)`, both `(batch_size, seq_len)` int64, from a token file.

    Args:
        path: The token file (raw uint16 or uint32 ids).
        seq_len: Tokens per window, T.
        batch_size: Windows per batch, B.
        dtype: `"uint16"` or `"uint32"`, as the file was written.
        vocab_size: When given, every id is checked once to be below it (DataError if not),
            so a bad id is a clear error rather than an index error deep in the model.
        sampling: `"random"` or `"sequential"`.
        shuffle: Sequential mode: a new seeded window order each epoch.
        batches_per_epoch: Batches per epoch; 0 = `((N-1)//T) // (B*world_size)`, one pass.
            Sequential mode caps it at that number.
        drop_last: Sequential mode: leave out a final batch with fewer than B windows.
        seed: Seed of the window order; with the epoch it determines every batch.
        rank: This process's rank; it reads its slice of each global batch.
        world_size: Processes sharing each global batch of `world_size * batch_size`.

    Raises:
        DataError: the file is missing, its size is not a whole number of ids, it is too
            short for one window, or it holds an id outside the vocabulary.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        seq_len: int,
        batch_size: int,
        dtype: str = "uint16",
        vocab_size: int | None = None,
        sampling: str = "random",
        shuffle: bool = True,
        batches_per_epoch: int = 0,
        drop_last: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if sampling not in SAMPLING_MODES:
            raise DataError(
                f"sampling must be one of {', '.join(SAMPLING_MODES)}, got {sampling!r}"
            )
        if seq_len < 1 or batch_size < 1:
            raise DataError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
        self.path = Path(path)
        if str(dtype) not in ("uint16", "uint32"):
            raise DataError(f"token file dtype must be uint16 or uint32, got {dtype!r}")
        self.dtype = np.dtype(dtype).newbyteorder("<")  # token files are little-endian
        if not self.path.is_file():
            raise DataError(f"token file {self.path} does not exist; run `hookloop prepare`")
        size = self.path.stat().st_size
        if size % self.dtype.itemsize:
            raise DataError(
                f"token file {self.path} has {size} bytes, not a whole number of "
                f"{self.dtype.name} ids; is the dtype in meta.json right?"
            )
        self.num_tokens = size // self.dtype.itemsize
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world_size {world_size}")
        self.seq_len, self.batch_size = seq_len, batch_size
        self.rank, self.world_size = rank, world_size
        self.global_batch_size = batch_size * world_size
        """Windows in one batch over every rank together."""
        self.num_windows = (self.num_tokens - 1) // seq_len
        if self.num_windows < 1:
            raise DataError(
                f"token file {self.path} has {self.num_tokens} tokens, too few for "
                f"one window of seq_len+1 = {seq_len + 1}; lower data.seq_len"
            )
        self.sampling, self.shuffle, self.drop_last, self.seed = sampling, shuffle, drop_last, seed
        G = self.global_batch_size
        full = self.num_windows // G
        if sampling == "sequential":
            self._window_batches = full if drop_last else -(-self.num_windows // G)
            cap = self._window_batches
            self.batches_per_epoch = min(batches_per_epoch, cap) if batches_per_epoch else cap
        else:
            self.batches_per_epoch = batches_per_epoch or max(full, 1)
        if self.batches_per_epoch < 1:
            raise DataError(
                f"token file {self.path} has {self.num_windows} windows of "
                f"{seq_len}, fewer than batch_size={batch_size} x {world_size} ranks; "
                "lower data.batch_size"
            )
        if vocab_size is not None:
            check_token_range(self.path, self.dtype, vocab_size)
        self._tokens: np.memmap | None = None  # mapped on first read

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[Batch]:
        """The batches of epoch 0 (for validation, where the order does not change)."""
        return self.iter_epoch(0, 0)

    def iter_epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of `epoch` from batch index `start` on, the same on every call."""
        if self.sampling == "random":
            return self._random_batches(epoch, start)
        return self._sequential_batches(epoch, start)

    def _sequential_batches(self, epoch: int, start: int) -> Iterator[Batch]:
        if self.shuffle:
            order = torch.randperm(self.num_windows, generator=epoch_generator(self.seed, epoch))
        else:
            order = torch.arange(self.num_windows)
        G = self.global_batch_size
        for b in range(start, self.batches_per_epoch):
            yield self._read(self._mine(order[b * G : (b + 1) * G]) * self.seq_len)

    def _random_batches(self, epoch: int, start: int) -> Iterator[Batch]:
        g = epoch_generator(self.seed, epoch)
        high = self.num_tokens - self.seq_len  # offsets 0 .. N-T-1 leave room for the target
        shape = (self.global_batch_size,)
        for _ in range(start):  # replay the draws of the batches already consumed
            torch.randint(high, shape, generator=g)
        for _ in range(start, self.batches_per_epoch):
            yield self._read(self._mine(torch.randint(high, shape, generator=g)))

    def _mine(self, chosen: torch.Tensor) -> np.ndarray:
        """This rank's slice of a global batch's windows (the whole batch on one rank)."""
        if self.world_size > 1:
            chosen = chosen[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return chosen.numpy()

    def windows(self, offsets: np.ndarray) -> Batch:
        """The `(inputs, targets)` of the windows starting at `offsets` (token indices)."""
        return self._read(np.asarray(offsets))

    def _read(self, offsets: np.ndarray) -> Batch:
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r")
        tokens, span, size = self._tokens, self.seq_len + 1, self.dtype.itemsize
        windows = np.empty((len(offsets), span), dtype=np.int64)  # 0 rows: a rank past the end
        for row, o in enumerate(offsets.tolist()):
            windows[row] = tokens[o : o + span]
            # The kernel may map a whole large page-cache folio (up to 2 MiB) for one
            # window; hand the pages back at once so resident memory stays flat however
            # large the file is (the data stays in the page cache, shared and reclaimable).
            _release(tokens, o * size, span * size)
        xy = torch.from_numpy(windows)
        return xy[:, :-1].contiguous(), xy[:, 1:].contiguous()


def _release(tokens: np.memmap, start: int, length: int) -> None:
    """Unmap the pages of `tokens` that cover bytes `[start, start+length)`."""
    mm = getattr(tokens, "_mmap", None)
    if mm is None or not _DONTNEED:
        return
    first = start // mmap.PAGESIZE * mmap.PAGESIZE
    end = min(-(-(start + length) // mmap.PAGESIZE) * mmap.PAGESIZE, len(mm))
    mm.madvise(_DONTNEED, first, end - first)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A torch.Generator determined by `(seed, epoch)` alone."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def check_token_range(path: str | Path, dtype: np.dtype | str, vocab_size: int) -> int:
    """The largest id in a token file, checked to be below `vocab_size`.

    Reads the file in chunks with plain reads (not through a map), so checking a large file
    leaves no pages resident in the process.

    Raises:
        DataError: an id is `>= vocab_size`.
    """
    dtype = np.dtype(dtype).newbyteorder("<")
    buffer = np.empty(_CHECK_CHUNK, dtype=dtype)
    largest = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(memoryview(buffer).cast("B")):
            largest = max(largest, int(buffer[: n // dtype.itemsize].max()))
    if largest >= vocab_size:
        raise DataError(
            f"token file {path} holds id {largest}, outside the vocabulary of "
            f"{vocab_size} ids; re-run `hookloop prepare` or set model.vocab_size "
            f"to at least {largest + 1}"
        )
    return largest
