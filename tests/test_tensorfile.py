"""hookloop's safetensors writer/reader agree with the safetensors package both ways."""

from __future__ import annotations

import hashlib

import torch
from safetensors.torch import load_file, save_file

from hookloop.checkpoint.tensorfile import read_tensors, write_tensors

TENSORS = {
    "f32": torch.randn(3, 4),
    "bf16": torch.randn(5).to(torch.bfloat16),
    "scalar": torch.tensor(7.0),
    "empty": torch.zeros(0, 3),
    "flags": torch.tensor([True, False]),
    "ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
    "bytes": torch.arange(3, dtype=torch.uint8),
}


def same(a, b):
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
    )


def test_written_files_load_with_safetensors_and_hash_matches(tmp_path):
    sha, size = write_tensors(tmp_path / "a.safetensors", TENSORS, {"format": "pt"})
    data = (tmp_path / "a.safetensors").read_bytes()
    assert sha == hashlib.sha256(data).hexdigest() and size == len(data)
    assert same(load_file(tmp_path / "a.safetensors"), TENSORS)
    assert same(read_tensors(bytearray(data)), TENSORS)


def test_reads_files_the_safetensors_package_wrote(tmp_path):
    save_file(TENSORS, tmp_path / "b.safetensors")
    assert same(read_tensors(bytearray((tmp_path / "b.safetensors").read_bytes())), TENSORS)
