"""Streaming prepare: documents to token files in bounded pieces, with flat memory.

`prepare_sources` reads the documents of a `Source` (see `hookloop.lm.sources`) piece by
piece, tokenizes each piece and appends its ids to `train.bin` or `val.bin`, so memory does
not grow with the corpus. Building the tokenizer is a first pass when it needs the text: the
alphabet of a `char` tokenizer (a count of code points), the merges of a `bpe` one.

Documents go whole to one split: with `val_fraction`, a seeded choice of that fraction of
the documents is validation; a source of a single text document is cut by position
instead (its last `val_fraction`, at a newline). Between two documents of a split comes the
tokenizer's end-of-text id (`byte`, `bpe`) or a newline (`char`).

Everything is written into a temporary sibling `.NAME.partial-*` and renamed into place
only once complete: an interrupted prepare leaves no directory that training accepts.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from hookloop.errors import DataError
from hookloop.lm.sources import Source
from hookloop.lm.streamio import Background, Progress, TokenWriter, token_dtype
from hookloop.lm.tokenizers import (
    BpeTokenizer,
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
    cut_pieces,
)

__all__ = ["META_FORMAT", "SPLITS", "prepare_sources", "token_dtype"]

log = structlog.get_logger("hookloop")

META_FORMAT = 1
SPLITS = ("train", "val")
_BPE_PIECE = 1 << 16  # characters per BPE encode call; a batch of them is encoded in parallel
_BATCH_CHARS = 1 << 22  # characters tokenized per batch


def prepare_sources(
    train: Source,
    out: str | Path,
    *,
    val: Source | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    tokenizer: str | Tokenizer = "char",
    bpe_vocab_size: int = 4096,
    progress: bool | None = None,
    source: list[str] | None = None,
) -> dict[str, Any]:
    """Tokenize the documents of `train` (and `val`) into the prepared directory `out`.

    Args:
        train: The documents; with `val` None, `val_fraction` of them are validation.
        out: The directory to create (it must not exist yet, or be empty).
        val: Separate validation documents.
        val_fraction: Fraction of the documents (or, for one text document, of its text)
            for validation.
        seed: Seed of the choice of validation documents.
        tokenizer: A kind (`char`, `byte`, `bpe`), built from all the text, or a ready one.
        bpe_vocab_size: Vocabulary size when training a BPE tokenizer.
        progress: Show a progress bar; None = only on a terminal outside CI.
        source: Where the text came from, for meta.json (default: the files read).

    Returns:
        The metadata written to meta.json.

    Raises:
        DataError: bad input or a full disk; nothing is left at `out` then.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} already exists and is not empty; choose another --out or remove it")
    above = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if above is not None:
        raise DataError(f"--out {out} is under {above}, which is a file; choose another --out")
    plan = _plan(train, val, val_fraction, seed)
    bar = Progress(sum(s.total_bytes for s, _ in plan), progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    _warn_leftovers(out)
    owner = f"{os.getpid()}@{socket.gethostname()}-"  # _warn_leftovers tells a live one
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{owner}", dir=out.parent))
    try:
        tok = _build(tokenizer, plan, bpe_vocab_size, bar)
        background = Background()
        writers = {s: TokenWriter(tmp / f"{s}.bin", tok, background) for s in SPLITS}
        try:
            _tokenize(plan, tok, writers, bar.stage("tokenize"))
        finally:
            try:
                background.join()
            finally:
                for writer in writers.values():
                    writer.close()
        bar.close()
        split = {"val_fraction": None if val else val_fraction, "split_seed": seed}
        meta = _finish(tmp, tok, writers, source or _files(plan), split)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(
            f"prepare failed writing {exc.filename or tmp}: {exc.strerror or exc}; "
            f"nothing was written to {out} (the partial output was removed)"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    return meta


# --- which document goes where ------------------------------------------------------------

Plan = list[tuple[Source, Any]]  # (source, "train" | "val" | a boolean is-validation mask)


def _plan(train: Source, val: Source | None, fraction: float, seed: int) -> Plan:
    if val is not None:
        return [(train, "train"), (val, "val")]
    if not 0 < fraction < 1:
        raise DataError(f"--val-fraction must be between 0 and 1, got {fraction}")
    count = train.count_documents()
    single_text = count == 1 and train.dataset is None and _is_plain_text(train.files[0])
    if single_text:
        head, tail = train.split_tail(fraction)
        return [(head, "train"), (tail, "val")]
    n_val = max(1, round(count * fraction))
    if count < 2 or n_val >= count:
        raise DataError(
            f"{count} document(s) cannot be split into training and validation with "
            f"--val-fraction {fraction}; give more documents, another fraction, or --val"
        )
    mask = np.zeros(count, dtype=bool)
    mask[np.random.default_rng(seed).choice(count, n_val, replace=False)] = True
    return [(train, mask)]


def _is_plain_text(path: Path) -> bool:
    return path.suffix.lower() not in (".jsonl", ".json", ".ndjson", ".parquet")


def _documents(plan: Plan, utf8: bool = False) -> Iterator[tuple[str, Source, Iterator[Any]]]:
    """(split, source, document) of every document; `utf8` as in `Source.documents`."""
    for source, where in plan:
        for index, document in enumerate(source.documents(utf8=utf8)):
            if isinstance(where, str):
                split = where
            else:
                if index >= len(where):
                    raise DataError(f"{source.files[0]} changed while being prepared")
                split = "val" if where[index] else "train"
            yield split, source, document


# --- building the tokenizer ------------------------------------------------------------


def _build(tokenizer: str | Tokenizer, plan: Plan, vocab_size: int, bar: Progress) -> Tokenizer:
    if not isinstance(tokenizer, str):
        return tokenizer
    if tokenizer == "byte":
        return ByteTokenizer(eot=True)
    if tokenizer == "char":
        return _char_vocabulary(plan, bar.stage("vocabulary"))
    if tokenizer == "bpe":
        return BpeTokenizer.train(_all_pieces(plan, bar.stage("train bpe")), vocab_size)
    raise DataError(f"unknown tokenizer {tokenizer!r}; choose one of char, byte, bpe")


def _all_pieces(plan: Plan, bar: Progress) -> Iterator[str]:
    # cut at safe points, so the trainer sees the same pre-tokens however the text was read
    for _, source, document in _documents(plan):
        for piece in _recut(document):
            yield piece
            bar.update(source)


def _char_vocabulary(plan: Plan, bar: Progress) -> CharTokenizer:
    """The alphabet of every document, collected piece by piece (plus the newline that
    separates documents)."""
    seen: set[str] = set()
    seen_ascii = b""  # the ASCII characters seen so far, deleted from each piece's bytes
    documents = {s: 0 for s in SPLITS}
    for split, source, document in _documents(plan, utf8=True):
        documents[split] += 1
        for piece in document:
            # Deleting known ASCII bytes leaves new ASCII characters and whole multi-byte
            # characters (their bytes are never ASCII); usually it leaves nothing.
            rest = piece.translate(None, seen_ascii)
            if rest:
                seen.update(rest.decode("utf-8", "surrogatepass"))
                seen_ascii = "".join(c for c in sorted(seen) if c.isascii()).encode("ascii")
            bar.update(source)
    if max(documents.values()) > 1:
        seen.add("\n")
    return CharTokenizer(sorted(seen))


# --- tokenizing and writing ------------------------------------------------------------


def _separator(tok: Tokenizer) -> np.ndarray:
    if tok.eot_id is not None:
        return np.array([tok.eot_id], dtype=np.int64)
    return tok.encode("\n") if isinstance(tok, CharTokenizer) and "\n" in tok.chars else np.zeros(0)


def _tokenize(plan: Plan, tok: Tokenizer, writers: dict[str, TokenWriter], bar: Progress) -> None:
    separator = _separator(tok)
    bpe = isinstance(tok, BpeTokenizer)
    # (split, text), None standing for a separator; text is str for BPE, else UTF-8 bytes
    batch: list[tuple[str, Any]] = []
    size = 0
    for split, source, document in _documents(plan, utf8=not bpe):
        writer = writers[split]
        if writer.documents:
            batch.append((split, None))
        writer.documents += 1
        for piece in _recut(document) if bpe else document:
            batch.append((split, piece))
            writer.chars += _characters(piece)
            size += len(piece)
            if size >= _BATCH_CHARS:
                _flush(batch, tok, writers, separator)
                batch, size = [], 0
                bar.update(source)
        bar.update(source)
    _flush(batch, tok, writers, separator)


# every byte but those that continue a UTF-8 character (0x80-0xBF)
_NOT_CONTINUATION = bytes(range(0x80)) + bytes(range(0xC0, 0x100))


def _characters(piece: str | bytes) -> int:
    if isinstance(piece, str) or piece.isascii():
        return len(piece)
    return len(piece) - len(piece.translate(None, _NOT_CONTINUATION))


def _recut(document: Iterator[str]) -> Iterator[str]:
    """The text of a document in pieces of at most about 64k characters, cut only where
    `safe_cut` says BPE pre-tokens are not split."""
    carry = ""
    for piece in document:
        pieces, carry = cut_pieces(carry + piece if carry else piece, _BPE_PIECE, final=False)
        yield from pieces
    if carry:
        yield from cut_pieces(carry, _BPE_PIECE)[0]


def _flush(batch: list[tuple[str, Any]], tok: Tokenizer, writers, separator) -> None:
    """Tokenize a batch and hand each split's ids to its writer, one array per run of
    consecutive entries of that split."""
    texts = [text for _, text in batch if text is not None]
    if isinstance(tok, BpeTokenizer):
        encoded = iter(tok.encode_each(texts))
    else:  # char and byte: UTF-8 bytes, mapped without decoding when ASCII
        encoded = (tok.encode_utf8(text) for text in texts)  # type: ignore[attr-defined]
    run: list[np.ndarray] = []
    for i, (split, text) in enumerate(batch):
        run.append(separator if text is None else next(encoded))
        if i + 1 == len(batch) or batch[i + 1][0] != split:
            writers[split].write(run)
            run = []


def _files(plan: Plan) -> list[str]:
    return list(dict.fromkeys(str(f) for source, _ in plan for f in source.files))


def _finish(tmp, tok, writers, source: list[str], split_info: dict[str, Any]) -> dict[str, Any]:
    from hookloop import __version__

    for split, writer in writers.items():
        if not writer.tokens:
            raise DataError(
                f"the {'training' if split == 'train' else 'validation'} split is empty; "
                "both the training and the validation text must be non-empty"
            )
    tok.save(tmp / "tokenizer.json")
    meta = {
        "format": META_FORMAT,
        "source": source,
        "tokenizer": tok.kind,
        "vocab_size": tok.vocab_size,
        "dtype": token_dtype(tok.vocab_size),
        "eot_id": tok.eot_id,
        "separator": "eot" if tok.eot_id is not None else "newline",
        **{f"{s}_tokens": w.tokens for s, w in writers.items()},
        **{f"{s}_chars": w.chars for s, w in writers.items()},
        **{f"{s}_documents": w.documents for s, w in writers.items()},
        **split_info,
        "sha256": {f"{s}.bin": w.sha.hexdigest() for s, w in writers.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hookloop_version": __version__,
    }
    # meta.json is written last: a directory without it is never taken for prepared data
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp made it private; give it a normal directory's mode
    return meta


def _warn_leftovers(out: Path) -> None:
    prefix = f".{out.name}.partial-"
    leftovers = [p for p in sorted(out.parent.glob(prefix + "*")) if not _running(p, prefix)]
    if leftovers:
        log.warning(
            "prepare_leftovers",
            message="partial output of an interrupted prepare (safe to delete)",
            paths=[str(p) for p in leftovers],
        )


def _running(partial: Path, prefix: str) -> bool:
    """Whether the prepare writing `partial` (named `PREFIX<pid>@<host>-<random>`) is still
    running on this machine: another process preparing the same data (torchrun's ranks each
    prepare the default corpus on first use) is not an interrupted one."""
    pid, _, rest = partial.name[len(prefix) :].partition("@")
    host = rest.rpartition("-")[0]
    if not pid.isdigit() or host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, run by another user
    return True
