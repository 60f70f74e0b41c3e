"""Streaming prepare: bounded pieces, documents, separators, splits and atomic output."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hookloop.errors import DataError
from hookloop.lm import stream
from hookloop.lm.prepare import prepare_sources, prepare_texts, read_meta
from hookloop.lm.sources import open_source
from hookloop.lm.streamio import TokenWriter
from hookloop.lm.tokenizers import BpeTokenizer, CharTokenizer, cut_pieces, load_tokenizer, safe_cut

KINDS = ["char", "byte", "bpe"]
TEXT = (
    "The quick brown fox — naïve café, 日本語のテキスト 🙂🙃!\n"
    "  indented  line\twith\ttabs\n\n\nblank lines above; numbers 12345 678\n"
    "it's they're we've I'm  double  spaces   and punctuation?!...\r\n"
) * 40


def token_ids(directory, split):
    meta = read_meta(directory)
    return np.fromfile(directory / f"{split}.bin", dtype=np.dtype(meta["dtype"]).newbyteorder("<"))


def random_text(seed, n=3000):
    rng = random.Random(seed)
    alphabet = list("ab cd\n\n  \t'sxyz.!é日🙂") + ["the", " the", "ing", "\r\n", "  ", "\n "]
    return "".join(rng.choice(alphabet) for _ in range(n))


@pytest.mark.parametrize("kind", KINDS)
def test_streaming_equals_whole_text_prepare(tmp_path, kind):
    train, val = TEXT, "validation: café 日本 🙂 fox\n" * 5
    (tmp_path / "train.txt").write_text(train, encoding="utf-8", newline="")
    (tmp_path / "val.txt").write_text(val, encoding="utf-8")
    whole = prepare_texts(train.replace("\r\n", "\n"), val, tmp_path / "whole", tokenizer=kind)
    for piece in (3, 1 << 20):  # 3 bytes: pieces split multi-byte characters and "\r\n"
        out = tmp_path / f"s{piece}"
        meta = prepare_sources(
            open_source(tmp_path / "train.txt", piece_bytes=piece),
            out,
            val=open_source(tmp_path / "val.txt", piece_bytes=piece),
            tokenizer=kind,
        )
        assert meta["sha256"] == whole["sha256"] and meta["vocab_size"] == whole["vocab_size"]
        assert meta["train_chars"] == whole["train_chars"] == len(train.replace("\r\n", "\n"))
        for split in ("train", "val"):
            assert np.array_equal(token_ids(out, split), token_ids(tmp_path / "whole", split))
        assert (out / "tokenizer.json").read_text() == (
            tmp_path / "whole" / "tokenizer.json"
        ).read_text()


@pytest.mark.parametrize("seed", range(4))
def test_safe_cuts_never_change_bpe_ids(seed):
    text = random_text(seed)
    tok = BpeTokenizer.train(random_text(seed + 100, 20000), vocab_size=400)
    whole = tok._tok.encode(text).ids
    found = 0
    for end in range(10, len(text), 37):
        cut = safe_cut(text, end)
        if cut is not None:
            found += 1
            assert 1 <= cut <= end
            assert tok._tok.encode(text[:cut]).ids + tok._tok.encode(text[cut:]).ids == whole
    assert found > 50
    for size in (5, 50):
        pieces, rest = cut_pieces(text, size)
        assert rest == "" and "".join(pieces) == text and len(pieces) > len(text) // (size * 4)
        assert [i for piece in pieces for i in tok._tok.encode(piece).ids] == whole


def test_bpe_pieces_recut_in_a_stream_give_whole_text_ids(tmp_path, monkeypatch):
    text = random_text(7, 20000)
    (tmp_path / "t.txt").write_text(text, encoding="utf-8", newline="")
    tok = BpeTokenizer.train(random_text(8, 20000), vocab_size=500)
    monkeypatch.setattr(stream, "_BPE_PIECE", 50)  # many cuts, most inside merges
    monkeypatch.setattr(stream, "_BATCH_CHARS", 300)
    source = open_source(tmp_path / "t.txt", piece_bytes=11)
    head, tail = source.split_tail(0.2)
    prepare_sources(head, tmp_path / "d", val=tail, tokenizer=tok)
    for split, part in (("train", head), ("val", tail)):
        whole = "".join(next(part.documents()))
        assert token_ids(tmp_path / "d", split).tolist() == tok._tok.encode(whole).ids


def write_docs(path, n):
    docs = [f"document {i}: " + "words and more words " * (i % 5 + 1) for i in range(n)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return docs


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_documents_split_whole_and_separated_by_end_of_text(tmp_path, kind):
    docs = write_docs(tmp_path / "d.jsonl", 40)
    meta = prepare_sources(open_source(tmp_path / "d.jsonl"), tmp_path / "p", tokenizer=kind)
    tok = load_tokenizer(tmp_path / "p" / "tokenizer.json")
    assert meta["eot_id"] == tok.eot_id is not None and meta["separator"] == "eot"
    assert (meta["train_documents"], meta["val_documents"]) == (36, 4)
    seen = []
    for split in ("train", "val"):
        ids = token_ids(tmp_path / "p", split)
        assert int((ids == tok.eot_id).sum()) == meta[f"{split}_documents"] - 1
        cuts = np.flatnonzero(ids == tok.eot_id)
        seen.append([tok.decode(part) for part in np.split(ids, cuts)])
    train_docs, val_docs = seen
    assert sorted(train_docs + val_docs) == sorted(docs)  # every document whole, once
    assert not set(train_docs) & set(val_docs)
    again = prepare_sources(open_source(tmp_path / "d.jsonl"), tmp_path / "q", tokenizer=kind)
    assert again["sha256"] == meta["sha256"]  # the same seed chooses the same documents
    other = prepare_sources(
        open_source(tmp_path / "d.jsonl"), tmp_path / "r", tokenizer=kind, seed=1
    )
    assert other["sha256"] != meta["sha256"]


def test_char_vocabulary_from_a_streaming_pass(tmp_path):
    docs = write_docs(tmp_path / "d.jsonl", 10)
    meta = prepare_sources(open_source(tmp_path / "d.jsonl"), tmp_path / "p", val_fraction=0.3)
    tok = load_tokenizer(tmp_path / "p" / "tokenizer.json")
    assert isinstance(tok, CharTokenizer) and meta["separator"] == "newline"
    assert tok.chars == CharTokenizer.from_text("\n".join(docs)).chars


def test_too_few_documents_to_split(tmp_path):
    write_docs(tmp_path / "d.jsonl", 1)
    with pytest.raises(DataError, match="1 document.* cannot be split"):
        prepare_sources(open_source(tmp_path / "d.jsonl"), tmp_path / "p")
    assert list(tmp_path.iterdir()) == [tmp_path / "d.jsonl"]


@pytest.mark.parametrize(
    ("method", "error", "raised", "message"),
    [
        ("write", KeyboardInterrupt(), KeyboardInterrupt, None),  # Ctrl-C while tokenizing
        ("_append", OSError(28, "No space left on device"), DataError, "device; nothing was"),
    ],
)
def test_a_failed_prepare_leaves_nothing(tmp_path, monkeypatch, method, error, raised, message):
    (tmp_path / "t.txt").write_text(TEXT)
    calls = []
    original = getattr(TokenWriter, method)

    def fail(self, ids):
        calls.append(1)
        if len(calls) > 2:
            raise error
        original(self, ids)

    monkeypatch.setattr(TokenWriter, method, fail)
    monkeypatch.setattr(stream, "_BATCH_CHARS", 64)  # many writes, so the third fails
    with pytest.raises(raised, match=message):
        prepare_sources(open_source(tmp_path / "t.txt", piece_bytes=64), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


def test_killed_prepare_leaves_no_directory_training_accepts(tmp_path):
    (tmp_path / "big.txt").write_text("some words of text\n" * 300_000)  # 5.7 MB
    proc = subprocess.Popen(
        [sys.executable, "-m", "hookloop", "prepare", str(tmp_path / "big.txt")]
        + ["--out", str(tmp_path / "data"), "--piece-bytes", "256"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size for p in tmp_path.glob(".data.partial-*/*.bin")):
            assert proc.poll() is None and time.monotonic() < deadline, "prepare ended early"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert not (tmp_path / "data").exists()
    for leftover in tmp_path.glob(".data.partial-*"):
        with pytest.raises(DataError, match="not a prepared data directory"):
            read_meta(leftover)


def test_progress_bar_only_when_asked_or_on_a_terminal(tmp_path, capsys):
    (tmp_path / "t.txt").write_text(TEXT)
    prepare_sources(open_source(tmp_path / "t.txt"), tmp_path / "quiet")  # pytest: no tty
    assert capsys.readouterr().err == ""
    prepare_sources(open_source(tmp_path / "t.txt"), tmp_path / "shown", progress=True)
    err = capsys.readouterr().err
    assert "vocabulary" in err and "tokenize" in err and "B/s" in err


def test_only_the_partial_output_of_a_prepare_that_is_gone_is_reported(tmp_path):
    """A `.NAME.partial-*` directory of a prepare still running on this machine (torchrun's
    ranks preparing the same data at once) is not called interrupted; one of a process that
    is gone, or of the older naming, is."""
    import socket

    from structlog.testing import capture_logs

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    host = socket.gethostname()
    running = tmp_path / f".data.partial-{os.getpid()}@{host}-abc123"
    gone = tmp_path / f".data.partial-{dead.stdout.strip()}@{host}-def456"
    old = tmp_path / ".data.partial-k2j4h5g6"
    for partial in (running, gone, old):
        partial.mkdir()
    (tmp_path / "t.txt").write_text(TEXT)
    with capture_logs() as logs:
        prepare_sources(open_source(tmp_path / "t.txt"), tmp_path / "data")
    (warning,) = [e for e in logs if e["event"] == "prepare_leftovers"]
    assert warning["paths"] == [str(gone), str(old)]
    assert read_meta(tmp_path / "data")["train_tokens"] > 0
