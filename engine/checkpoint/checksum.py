"""Checksums of a checkpoint's tensor files: the algorithms, how `state.json` writes them,
and hashing that runs while a file is written or in parallel chunks while it is read.

`state.json` records each tensor file's checksum as one string, `"<algorithm>:<hex digest>"`
(`files.<name>.checksum`), e.g. `"crc32:5a1c07e2"`:

- `crc32` (the default): zlib's CRC-32 of the whole file, the same number `zlib.crc32` or
  any CRC-32 tool gives. It catches every burst error up to 32 bits and any other damage
  with probability 1 - 2^-32, is in the standard library, and runs at several GB/s on each
  core: the file is cut into chunks hashed on all cores and the chunk CRCs are combined.
- `sha256`: SHA-256 of the whole file, for a digest that can be compared with one published
  elsewhere (see the guide's security page). About three times slower, one core per file.

Checkpoints written before the checksum was configurable hold `files.<name>.sha256` (a hex
digest); they are read and verified as `sha256`.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = ["ALGORITHMS", "DEFAULT", "Checksum", "checksums", "crc32_combine", "parse"]

ALGORITHMS: dict[str, int] = {"crc32": 8, "sha256": 64}
"""The checksum algorithms, each with the length of its hex digest."""
DEFAULT = "crc32"
CHUNK = 16 << 20
"""Bytes per chunk when a CRC-32 is computed in parallel."""
_POLY = 0xEDB88320  # CRC-32 (reflected), as zlib


class Checksum:
    """A running checksum of one algorithm: `update` with the bytes in order, then `text`."""

    def __init__(self, algorithm: str = DEFAULT) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown checksum algorithm {algorithm!r}; use one of {known()}")
        self.algorithm = algorithm
        self._crc = 0
        self._sha = hashlib.sha256() if algorithm == "sha256" else None

    def update(self, data: Any) -> None:
        """Add the next bytes (any buffer); releases the GIL on large buffers."""
        if self._sha is not None:
            self._sha.update(data)
        else:
            self._crc = zlib.crc32(data, self._crc)

    def text(self) -> str:
        """The checksum as state.json records it: `"<algorithm>:<hex>"`."""
        digest = self._sha.hexdigest() if self._sha is not None else f"{self._crc:08x}"
        return f"{self.algorithm}:{digest}"


def known() -> str:
    """The algorithm names, for messages."""
    return ", ".join(ALGORITHMS)


def parse(text: Any) -> tuple[str, str] | None:
    """`(algorithm, hex digest)` of a recorded checksum, or None if it is not one."""
    if not isinstance(text, str) or ":" not in text:
        return None
    algorithm, digest = text.split(":", 1)
    size = ALGORITHMS.get(algorithm)
    if size is None or len(digest) != size or digest.strip("0123456789abcdef"):
        return None
    return algorithm, digest


def checksums(files: dict[str, tuple[str, Any]]) -> dict[str, str]:
    """The checksum text of each buffer, `{name: (algorithm, buffer)}`, hashed on every core.

    CRC-32 buffers are cut into `CHUNK`-byte pieces hashed in parallel and combined; a
    SHA-256 is one sequential task per file (the files still run side by side).
    """
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:  # zlib and hashlib release the GIL
        jobs: dict[str, tuple[str, list[Future]]] = {}
        for name, (algorithm, buffer) in files.items():
            view = memoryview(buffer).cast("B")
            if algorithm == "crc32":
                parts = [view[i : i + CHUNK] for i in range(0, len(view), CHUNK)] or [view]
                jobs[name] = (algorithm, [pool.submit(_crc, part) for part in parts])
            else:
                jobs[name] = (algorithm, [pool.submit(_whole, algorithm, view)])
        return {name: _join(algorithm, futures) for name, (algorithm, futures) in jobs.items()}


def _crc(part: memoryview) -> tuple[int, int]:
    return zlib.crc32(part), len(part)


def _whole(algorithm: str, view: memoryview) -> str:
    checksum = Checksum(algorithm)
    checksum.update(view)
    return checksum.text()


def _join(algorithm: str, futures: list[Future]) -> str:
    if algorithm != "crc32":
        return futures[0].result()
    crc = 0
    for future in futures:
        part, length = future.result()
        crc = crc32_combine(crc, part, length)
    return f"crc32:{crc:08x}"


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """The CRC-32 of `A + B` from `crc32(A)`, `crc32(B)` and `len(B)` (zlib's method)."""
    return _multiply(_x_power_8n(length2), crc1) ^ crc2


def _multiply(a: int, b: int) -> int:
    """a * b modulo the CRC polynomial (bit-reflected, as zlib's `multmodp`)."""
    m, product = 1 << 31, 0
    while True:
        if a & m:
            product ^= b
            if not a & (m - 1):
                return product
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _powers() -> list[int]:
    powers = [1 << 30]  # x^1; each next entry squares the last: x^(2^k)
    for _ in range(31):
        powers.append(_multiply(powers[-1], powers[-1]))
    return powers


_X_POWERS = _powers()


def _x_power_8n(n: int) -> int:
    """x^(8n) modulo the CRC polynomial: the operator that shifts a CRC past n zero bytes."""
    product, k = 1 << 31, 3
    while n:
        if n & 1:
            product = _multiply(_X_POWERS[k & 31], product)
        n >>= 1
        k += 1
    return product
