"""Preparing text into token files; the embedded default corpus."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from hookloop.errors import DataError
from hookloop.lm.corpus import default_corpus, stdlib_files, stdlib_texts
from hookloop.lm.prepare import prepare_texts, read_meta, read_text_sources, split_text, token_dtype
from hookloop.lm.tokenizers import CharTokenizer, load_tokenizer


def test_one_vocabulary_for_both_splits(tmp_path):
    # 'z' occurs only in the validation text: it must still get an id
    meta = prepare_texts("abcabc\n", "zab\n", tmp_path / "d", tokenizer="char")
    tok = load_tokenizer(tmp_path / "d" / "tokenizer.json")
    assert tok.vocab_size == meta["vocab_size"] == 5
    val = np.fromfile(tmp_path / "d" / "val.bin", dtype="<u2")
    assert tok.decode(val) == "zab\n"
    assert read_meta(tmp_path / "d") == meta
    for name in ("train.bin", "val.bin"):
        digest = hashlib.sha256((tmp_path / "d" / name).read_bytes()).hexdigest()
        assert meta["sha256"][name] == digest


def test_dtype_follows_the_vocabulary(tmp_path):
    assert token_dtype(256) == "uint16" and token_dtype(65536) == "uint16"
    assert token_dtype(65537) == "uint32"
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 70000) if not 0xD800 <= c < 0xE000]
    tok = CharTokenizer(chars)
    meta = prepare_texts(chars[-1] * 5, chars[0] * 3, tmp_path / "wide", tokenizer=tok)
    assert meta["dtype"] == "uint32"
    assert (
        np.fromfile(tmp_path / "wide" / "train.bin", dtype="<u4").tolist() == [len(chars) - 1] * 5
    )


def test_split_cuts_at_a_newline():
    text = "".join(f"line {i}\n" for i in range(100))
    train, val = split_text(text, 0.1)
    assert train + val == text and train.endswith("\n")
    assert 0.08 < len(val) / len(text) < 0.12
    with pytest.raises(DataError):
        split_text(text, 1.5)


def test_directories_are_read_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.md").write_text("third")
    (tmp_path / ".hidden").write_text("never")
    text, files = read_text_sources(tmp_path)
    assert text == "first\nsecond\nthird" and len(files) == 3
    assert read_text_sources(tmp_path, glob="*.md")[0] == "third"
    with pytest.raises(DataError, match="no files matching"):
        read_text_sources(tmp_path, glob="*.rst")


def test_refuses_to_overwrite_or_write_empty_splits(tmp_path):
    prepare_texts("ab", "ba", tmp_path / "d")
    with pytest.raises(DataError, match="already exists"):
        prepare_texts("ab", "ba", tmp_path / "d")
    with pytest.raises(DataError, match="non-empty"):
        prepare_texts("ab", "", tmp_path / "e")
    assert not (tmp_path / "e").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporary left behind


def test_stdlib_slice_is_deterministic_ascii_and_spread(tmp_path):
    root = tmp_path / "lib"
    for i in range(40):
        (root / f"pkg{i % 4}").mkdir(parents=True, exist_ok=True)
        (root / f"pkg{i % 4}" / f"m{i:02d}.py").write_text(f"x = {i}\n" * 50)
    (root / "test").mkdir()
    (root / "test" / "t.py").write_text("skipped = True\n")
    (root / "pkg0" / "uni.py").write_text("é = 1\n")
    files = stdlib_files(root)
    assert all("test" not in f.parts for f in files)
    train, val, used = stdlib_texts(budget=3000, root=root)
    assert (train, val, used) == stdlib_texts(budget=3000, root=root)
    assert train.isascii() and val.isascii() and "é" not in train + val
    assert {p.split("/")[-2] for p in used} == {"pkg0", "pkg1", "pkg2", "pkg3"}  # spread
    assert val.count("x = ") == 50 * (len(used) // 10)  # every tenth file is validation


def test_default_corpus_is_prepared_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HOOKLOOP_CACHE", str(tmp_path))
    first = default_corpus(budget=200_000)
    meta = json.loads((first / "meta.json").read_text())
    assert meta["tokenizer"] == "char" and meta["vocab_size"] < 128
    stamp = (first / "train.bin").stat().st_mtime_ns
    assert default_corpus(budget=200_000) == first
    assert (first / "train.bin").stat().st_mtime_ns == stamp
