"""Tokenizers: round trips, vocabulary built once, JSON save/load, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hookloop.errors import DataError
from hookloop.lm.tokenizers import (
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
)

TEXT = "def f(x):\n    return x * 2  # ünïcødé 🐍\n"


def test_char_round_trip_and_vocab_in_code_point_order():
    tok = CharTokenizer.from_text(TEXT)
    ids = tok.encode(TEXT)
    assert ids.dtype == np.int64 and ids.shape == (len(TEXT),)
    assert tok.decode(ids) == TEXT
    assert tok.chars == sorted(set(TEXT))
    assert tok.vocab_size == len(set(TEXT))


def test_char_unknown_character_is_a_data_error():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(
        DataError, match=r"1 character\(s\) are not in the vocabulary of 3, e.g. 'z'"
    ):
        tok.encode("abz")
    with pytest.raises(DataError):
        tok.encode("\U0001f40d")  # above every code point in the table
    with pytest.raises(DataError, match="ids must be in"):
        tok.decode([3])


@pytest.mark.parametrize("seed", range(3))
def test_char_encode_of_utf8_bytes_equals_encode_of_the_text(seed):
    rng = np.random.default_rng(seed)
    alphabet = list("ab cd\n\t'.!\x7fé日🙂\ud800ÿ") + [chr(0x10FFFF)]
    tok = CharTokenizer(sorted(alphabet))
    for n in (0, 1, 5, 300):
        # mostly ASCII, sometimes all multi-byte: every mix of marked and plain bytes
        weights = np.where(np.array([c.isascii() for c in alphabet]), 1.0, rng.uniform(0, 3))
        text = "".join(rng.choice(alphabet, n, p=weights / weights.sum()))
        ids = tok.encode_utf8(text.encode("utf-8", "surrogatepass"))
        assert ids.tolist() == [tok.chars.index(c) for c in text]
    narrow = CharTokenizer([c for c in alphabet if c not in "é."])
    for text, unknown in (("ab é", "é"), ("ab.", "."), ("日é日.", ".é"), ("é", "é")):
        with pytest.raises(DataError, match=f"not in the vocabulary of 15, e.g. '{unknown}'"):
            narrow.encode_utf8(text.encode())
    # more ids than uint16 holds; then the ASCII "a" given last, so its id is 70000
    text = "a" + chr(0x4E00 + 69_999) + "a" + chr(0x4E00)
    wide = CharTokenizer(["a"] + [chr(0x4E00 + i) for i in range(70_000)])
    assert wide.encode_utf8(text.encode()).tolist() == [0, 70_000, 0, 1]
    unsorted = CharTokenizer([chr(0x4E00 + i) for i in range(70_000)] + ["a"])
    assert unsorted.encode_utf8(text.encode()).tolist() == [70_000, 69_999, 70_000, 0]


def test_byte_round_trip_of_any_text():
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)
    assert tok.vocab_size == 256 and ids.max() < 256
    assert tok.decode(ids) == TEXT
    assert tok.decode(ids[:-3]).endswith("\ufffd")  # the snake cut after its first byte


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_save_load_is_json_and_equivalent(tmp_path, kind):
    pytest.importorskip("tokenizers") if kind == "bpe" else None
    text = TEXT * 50
    tok = build_tokenizer(kind, text, vocab_size=300)
    assert isinstance(tok, Tokenizer)
    path = tok.save(tmp_path / "tokenizer.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["kind"] == kind
    again = load_tokenizer(path)
    assert again.vocab_size == tok.vocab_size
    np.testing.assert_array_equal(again.encode(text), tok.encode(text))
    assert again.decode(again.encode(text)) == text


def test_bpe_compresses_repetitive_text():
    pytest.importorskip("tokenizers")
    text = "the quick brown fox jumps over the lazy dog\n" * 200
    tok = build_tokenizer("bpe", text, vocab_size=320)
    assert len(tok.encode(text)) < len(text.encode()) / 2


def test_bpe_without_the_package_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tokenizers(name, *args, **kwargs):
        if name == "tokenizers":
            raise ImportError("no module named tokenizers")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tokenizers)
    with pytest.raises(DataError, match=r"pip install '\.\[bpe\]' in the hookloop checkout"):
        build_tokenizer("bpe", TEXT)


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_tokenizer(tmp_path / "bad.json")
    (tmp_path / "odd.json").write_text('{"kind": "wordpiece"}')
    with pytest.raises(DataError, match="unknown kind 'wordpiece'"):
        load_tokenizer(tmp_path / "odd.json")
    with pytest.raises(DataError, match="unknown tokenizer 'words'"):
        build_tokenizer("words", TEXT)
