"""hookloop's safetensors writer/reader agree with the safetensors package both ways."""

from __future__ import annotations

import hashlib
import random
import zlib

import pytest
import torch
from safetensors.torch import load_file, save_file

from hookloop.checkpoint import checksum
from hookloop.checkpoint.checksum import checksums
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


@pytest.mark.parametrize(
    ("algorithm", "reference"),
    [
        ("crc32", lambda data: f"crc32:{zlib.crc32(data):08x}"),
        ("sha256", lambda data: "sha256:" + hashlib.sha256(data).hexdigest()),
    ],
)
def test_written_files_load_with_safetensors_and_checksum_matches(tmp_path, algorithm, reference):
    text, size = write_tensors(
        tmp_path / "a.safetensors", TENSORS, {"format": "pt"}, checksum=algorithm
    )
    data = (tmp_path / "a.safetensors").read_bytes()
    assert text == reference(data) and size == len(data)
    assert checksums({"a": (algorithm, bytearray(data))}) == {"a": text}
    assert same(load_file(tmp_path / "a.safetensors"), TENSORS)
    assert same(read_tensors(bytearray(data)), TENSORS)


@pytest.mark.parametrize("length", [0, 1, 999, 1000, 1001, 4096 + 7])
def test_chunked_crc32_is_the_crc32_of_the_whole_file(monkeypatch, length):
    monkeypatch.setattr(checksum, "CHUNK", 1000)  # many chunks, and a short last one
    data = bytearray(random.Random(length).randbytes(length))
    assert checksums({"f": ("crc32", data)})["f"] == f"crc32:{zlib.crc32(data):08x}"
    head, tail = data[: length // 3], data[length // 3 :]
    combined = checksum.crc32_combine(zlib.crc32(head), zlib.crc32(tail), len(tail))
    assert combined == zlib.crc32(data)


@pytest.mark.parametrize("algorithm", list(checksum.ALGORITHMS))
@pytest.mark.parametrize("damage", ["flip", "truncate", "append"])
def test_every_algorithm_sees_damage(monkeypatch, algorithm, damage):
    monkeypatch.setattr(checksum, "CHUNK", 64)
    data = bytearray(random.Random(1).randbytes(1000))
    before = checksums({"f": (algorithm, data)})["f"]
    for at in (0, 63, 64, 500, 999):  # chunk edges and inside
        bad = bytearray(data)
        if damage == "flip":
            bad[at] ^= 0x01
        elif damage == "truncate":
            bad = bad[:at]
        else:
            bad += b"\0" * (at + 1)
        assert checksums({"f": (algorithm, bad)})["f"] != before, (damage, at)


def test_parse_accepts_only_known_algorithms_and_digests():
    assert checksum.parse("crc32:0123abcd") == ("crc32", "0123abcd")
    assert checksum.parse("sha256:" + "0" * 64) == ("sha256", "0" * 64)
    for bad in [
        "md5:" + "0" * 32,
        "crc32:0123ABCD",
        "crc32:123",
        "sha256:" + "0" * 63,
        "0123abcd",
        7,
    ]:
        assert checksum.parse(bad) is None, bad
    with pytest.raises(ValueError, match="unknown checksum algorithm 'md5'"):
        checksum.Checksum("md5")


def test_reads_files_the_safetensors_package_wrote(tmp_path):
    save_file(TENSORS, tmp_path / "b.safetensors")
    assert same(read_tensors(bytearray((tmp_path / "b.safetensors").read_bytes())), TENSORS)
