"""Tokenize text once into a prepared data directory.

A prepared directory holds:

| file | content |
| --- | --- |
| `train.bin`, `val.bin` | the token ids of each split, raw little-endian `uint16` (or `uint32` when the vocabulary has more than 65536 ids) |
| `tokenizer.json` | the tokenizer, built once from all the text and used for both splits |
| `meta.json` | source, token counts, dtype, tokenizer kind, vocabulary size, sha256 of each `.bin` |

`hookloop prepare` writes it from files and datasets through `prepare_sources` (streaming,
see `hookloop.lm.stream`); the embedded default corpus through `prepare_texts`, from text in
memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hookloop.errors import DataError
from hookloop.filecheck import field, read_json
from hookloop.lm.sources import Source, list_files
from hookloop.lm.stream import META_FORMAT, prepare_sources, token_dtype
from hookloop.lm.tokenizers import Tokenizer

__all__ = [
    "META_FORMAT",
    "prepare_sources",
    "prepare_texts",
    "read_meta",
    "read_text_sources",
    "split_text",
    "token_dtype",
]


def read_text_sources(path: str | Path, *, glob: str = "*") -> tuple[str, list[str]]:
    """The text of a file, or of every matching file under a directory.

    Files of a directory are read in sorted path order (hidden ones skipped) and joined with
    a newline, so the result does not depend on the file system's listing order.

    Returns:
        The text and the list of files it came from.

    Raises:
        DataError: nothing to read, or a file that is not UTF-8 text.
    """
    files = list_files(path, glob)
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

    Each text is one document; this is `prepare_sources` for text already in memory. The
    directory is written in a temporary sibling and renamed into place, so a crash never
    leaves a half-prepared directory behind.

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
    if not train_text or not val_text:
        raise DataError("both the training and the validation text must be non-empty")
    names = [source] if isinstance(source, str) else list(source)
    return prepare_sources(
        Source([], texts=[train_text]),
        out,
        val=Source([], texts=[val_text]),
        tokenizer=tokenizer,
        bpe_vocab_size=bpe_vocab_size,
        source=names,
    )


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
