"""Write and read safetensors files straight from and into tensor memory, hashing on the way.

The files are standard safetensors (an 8-byte little-endian header length, a JSON header
padded with spaces to a multiple of 8, then the tensor bytes in header order, contiguous), so
`safetensors.torch.load_file` reads them. `safetensors.torch.save` first builds the whole
file in memory; writing each tensor's buffer directly and hashing it on a second thread
while it is written makes a checkpoint save cost about what `torch.save` does.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import torch

__all__ = ["read_tensors", "write_tensors"]

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
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> tuple[str, int]:
    """Write CPU tensors as a safetensors file, fsync it, and return its SHA-256 and size.

    Tensors are laid out widest dtype first, so every tensor's offset stays aligned.
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
    digest = hashlib.sha256(head)
    hasher = threading.Thread(target=lambda: [digest.update(b) for b in buffers])
    hasher.start()  # hashlib releases the GIL on large buffers, so this overlaps the write
    try:
        with open(path, "wb") as f:
            f.write(head)
            for buffer in buffers:
                f.write(buffer)
            f.flush()
            os.fsync(f.fileno())
    finally:
        hasher.join()
    return digest.hexdigest(), len(head) + offset


def read_tensors(data: bytearray) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file's bytes, as views into `data` (no copy).

    Raises:
        ValueError: the bytes are not a well-formed safetensors file.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(bytes(data[8 : 8 + n]))
    base = 8 + n
    tensors: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape = _BY_NAME[info["dtype"]], info["shape"]
        begin, end = info["data_offsets"]
        size = torch.empty((), dtype=dtype).element_size()
        if end - begin != size * _numel(shape) or base + end > len(data):
            raise ValueError(f"tensor {name} has offsets {begin}-{end} that do not fit its shape")
        if begin == end:
            tensors[name] = torch.empty(shape, dtype=dtype)
        elif (base + begin) % size == 0:
            flat = torch.frombuffer(data, dtype=torch.uint8, count=end - begin, offset=base + begin)
            tensors[name] = flat.view(dtype).reshape(shape)
        else:  # unaligned (another writer's layout): copy this one tensor
            chunk = bytearray(data[base + begin : base + end])
            tensors[name] = torch.frombuffer(chunk, dtype=torch.uint8).view(dtype).reshape(shape)
    return tensors


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
