"""Tokenize text once into a prepared data directory.

A prepared directory holds:

| file | content |
| --- | --- |
| `train.bin`, `val.bin` | the token ids of each split, raw little-endian `uint16` (or `uint32` when the vocabulary has more than 65536 ids) |
| `tokenizer.json` | the tokenizer, built once from all the text and used for both splits |
| `meta.json` | source, token counts, dtype, tokenizer kind, vocabulary size, sha256 of each `.bin` |

`hookloop prepare` and the embedded default corpus both write it through `prepare_texts`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hookloop.errors import DataError
from hookloop.filecheck import field, read_json
from hookloop.lm.tokenizers import Tokenizer, build_tokenizer

__all__ = [
    "META_FORMAT",
    "prepare_texts",
    "read_meta",
    "read_text_sources",
    "split_text",
    "token_dtype",
]

META_FORMAT = 1


def token_dtype(vocab_size: int) -> str:
    """`uint16` when every id fits in it, else `uint32`."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def read_text_sources(path: str | Path, *, glob: str = "*") -> tuple[str, list[str]]:
    """The text of a file, or of every matching file under a directory.

    Files of a directory are read in sorted path order (hidden ones skipped) and joined with
    a newline, so the result does not depend on the file system's listing order.

    Returns:
        The text and the list of files it came from.

    Raises:
        DataError: nothing to read, or a file that is not UTF-8 text.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob(glob)
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise DataError(f"no files matching {glob!r} under {path}")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"{path} does not exist; give a text file or a directory of them")
    texts = []
    for f in files:
        try:
            texts.append(f.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{f} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                "convert it or leave it out with --glob"
            ) from None
    return "\n".join(texts), [str(f) for f in files]


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """The first `1 - val_fraction` of the text for training, the rest for validation.

    The cut is moved back to the previous newline when there is one nearby, so a line is
    not split between the two.
    """
    if not 0 < val_fraction < 1:
        raise DataError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    cut = int(len(text) * (1 - val_fraction))
    newline = text.rfind("\n", max(0, cut - 1000), cut)
    if newline > 0:
        cut = newline + 1
    return text[:cut], text[cut:]


def prepare_texts(
    train_text: str,
    val_text: str,
    out: str | Path,
    *,
    tokenizer: str | Tokenizer = "char",
    bpe_vocab_size: int = 4096,
    source: Sequence[str] | str = (),
) -> dict[str, Any]:
    """Build (or use) a tokenizer, tokenize both splits and write a prepared directory.

    The directory is written in a temporary sibling and renamed into place, so a crash
    never leaves a half-prepared directory behind.

    Args:
        train_text: The training text.
        val_text: The validation text.
        out: The directory to create (it must not exist yet, or be empty).
        tokenizer: A kind (`char`, `byte`, `bpe`), built from both texts together, or a
            ready tokenizer.
        bpe_vocab_size: Vocabulary size when training a BPE tokenizer.
        source: Where the text came from, recorded in meta.json.

    Returns:
        The metadata written to meta.json.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} already exists and is not empty; choose another --out or remove it")
    if not train_text or not val_text:
        raise DataError("both the training and the validation text must be non-empty")
    tok = (
        build_tokenizer(tokenizer, train_text + val_text, vocab_size=bpe_vocab_size)
        if isinstance(tokenizer, str)
        else tokenizer
    )
    dtype = token_dtype(tok.vocab_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        counts, digests = {}, {}
        for split, text in (("train", train_text), ("val", val_text)):
            ids = tok.encode(text).astype(np.dtype(dtype).newbyteorder("<"))
            ids.tofile(tmp / f"{split}.bin")
            counts[split] = int(ids.size)
            digests[f"{split}.bin"] = hashlib.sha256(ids.tobytes()).hexdigest()
        tok.save(tmp / "tokenizer.json")
        from hookloop import __version__

        meta = {
            "format": META_FORMAT,
            "source": [source] if isinstance(source, str) else list(source),
            "tokenizer": tok.kind,
            "vocab_size": tok.vocab_size,
            "dtype": dtype,
            "train_tokens": counts["train"],
            "val_tokens": counts["val"],
            "train_chars": len(train_text),
            "val_chars": len(val_text),
            "sha256": digests,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "hookloop_version": __version__,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp made it private; give it a normal directory's mode
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The meta.json of a prepared directory.

    Raises:
        DataError: the directory or its meta.json is missing or malformed.
    """
    directory = Path(directory)
    path = directory / "meta.json"
    if not path.is_file():
        raise DataError(
            f"{directory} is not a prepared data directory (no meta.json); "
            f"run `hookloop prepare TEXT --out {directory}`"
        )
    fix = f"prepare the data again with `hookloop prepare TEXT --out {directory}`"
    meta = read_json(path, DataError, fix=fix)
    for key, kind, check, allowed in (
        ("dtype", "str", lambda v: v in ("uint16", "uint32"), "uint16 or uint32"),
        ("vocab_size", "count", lambda v: v >= 1, ">= 1"),
        ("tokenizer", "str", None, ""),
    ):
        field(meta, key, kind, file=path, error=DataError, fix=fix, check=check, allowed=allowed)
    return meta
