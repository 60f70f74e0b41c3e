"""Write and read safetensors files straight from and into tensor memory, checksummed on the way.

The files are standard safetensors (an 8-byte little-endian header length, a JSON header
padded with spaces to a multiple of 8, then the tensor bytes in header order, contiguous), so
`safetensors.torch.load_file` reads them. `safetensors.torch.save` first builds the whole
file in memory; writing each tensor's buffer directly and checksumming it on a second
thread while it is written makes a checkpoint save cost about what `torch.save` does.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import torch

from hookloop.checkpoint.checksum import DEFAULT, Checksum
from hookloop.errors import CheckpointError

__all__ = ["read_header", "read_tensors", "write_tensors"]

_MAX_HEADER = 100 * 1024 * 1024
"""safetensors' own limit on the header length."""

DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.uint16: "U16",
    torch.uint32: "U32",
    torch.uint64: "U64",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
_BY_NAME = {name: dtype for dtype, name in DTYPES.items()}


def write_tensors(
    path: Path,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
    *,
    checksum: str = DEFAULT,
) -> tuple[str, int]:
    """Write CPU tensors as a safetensors file, fsync it, and return its checksum and size.

    Tensors are laid out widest dtype first, so every tensor's offset stays aligned.

    Args:
        checksum: The algorithm (see `hookloop.checkpoint.checksum`); the checksum is
            returned as state.json records it, `"<algorithm>:<hex>"`.
    """
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    buffers = []
    offset = 0
    for name in order:
        t = tensors[name].contiguous()
        nbytes = t.numel() * t.element_size()
        header[name] = {
            "dtype": DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        if nbytes:
            buffers.append(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    head = len(text).to_bytes(8, "little") + text
    digest = Checksum(checksum)
    digest.update(head)
    hasher = threading.Thread(target=lambda: [digest.update(b) for b in buffers])
    hasher.start()  # zlib and hashlib release the GIL on large buffers: this overlaps the write
    try:
        with open(path, "wb") as f:
            f.write(head)
            for buffer in buffers:
                f.write(buffer)
            f.flush()
            os.fsync(f.fileno())
    finally:
        hasher.join()
    return digest.text(), len(head) + offset


def read_tensors(data: Any, *, name: str = "safetensors file") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file's bytes, as views into `data` (no copy).

    `data` is a writable buffer: a `bytearray`, or a copy-on-write `mmap` of the file.

    The header is checked before any tensor is made: its length, that it is a JSON object,
    each entry's dtype, shape and offsets, and that the offsets tile the data exactly.

    Args:
        name: The file, for error messages.

    Raises:
        CheckpointError: the bytes are not a well-formed safetensors file.
    """
    header, base = read_header(data, name=name)
    tensors: dict[str, torch.Tensor] = {}
    for key, (dtype, shape, begin, end) in header.items():
        size = torch.empty((), dtype=dtype).element_size()
        if begin == end:
            tensors[key] = torch.empty(shape, dtype=dtype)
        elif (base + begin) % size == 0:
            flat = torch.frombuffer(data, dtype=torch.uint8, count=end - begin, offset=base + begin)
            tensors[key] = flat.view(dtype).reshape(shape)
        else:  # unaligned (another writer's layout): copy this one tensor
            chunk = bytearray(data[base + begin : base + end])
            tensors[key] = torch.frombuffer(chunk, dtype=torch.uint8).view(dtype).reshape(shape)
    return tensors


def read_header(
    data: bytes | bytearray, *, name: str = "safetensors file"
) -> tuple[dict[str, tuple[torch.dtype, list[int], int, int]], int]:
    """The checked header of a safetensors file's bytes: name -> (dtype, shape, begin, end),
    and the offset where the tensor data starts.

    Raises:
        CheckpointError: anything malformed, with `name` and the entry named.
    """
    fix = "the file is damaged or not a safetensors file"
    if len(data) < 8:
        raise CheckpointError(f"{name} is truncated ({len(data)} bytes); {fix}")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8 or n > _MAX_HEADER:
        raise CheckpointError(
            f"{name} is truncated or not safetensors: its header claims {n} bytes; {fix}"
        )
    try:
        header = json.loads(bytes(data[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{name} has a header that is not UTF-8 JSON; {fix}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{name} has a header that is not a JSON object; {fix}")
    base, checked, spans = 8 + n, {}, []
    for key, info in header.items():
        if key == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise CheckpointError(f"{name}: __metadata__ must map names to strings; {fix}")
            continue
        entry = _entry(info)
        if entry is None:
            raise CheckpointError(f"{name}: tensor {key!r} has a malformed header entry; {fix}")
        dtype, shape, begin, end = entry
        size = torch.empty((), dtype=dtype).element_size()
        if end - begin != size * _numel(shape) or base + end > len(data):
            raise CheckpointError(
                f"{name}: tensor {key!r} has offsets {begin}-{end} that do not fit its shape "
                f"or the file; {fix}"
            )
        checked[key] = entry
        spans.append((begin, end))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise CheckpointError(f"{name}: tensor data overlaps or has a gap at {begin}; {fix}")
        position = end
    if base + position != len(data):
        raise CheckpointError(
            f"{name} has {len(data) - base - position} bytes past its tensors; {fix}"
        )
    return checked, base


def _entry(info: object) -> tuple[torch.dtype, list[int], int, int] | None:
    if not isinstance(info, dict) or info.get("dtype") not in _BY_NAME:
        return None
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(type(d) is int and 0 <= d < 2**40 for d in shape):
        return None
    if not isinstance(offsets, list) or len(offsets) != 2:
        return None
    begin, end = offsets
    if type(begin) is not int or type(end) is not int or not 0 <= begin <= end:
        return None
    return _BY_NAME[info["dtype"]], shape, begin, end


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
