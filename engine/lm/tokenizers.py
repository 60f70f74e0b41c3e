"""Tokenizers: text to token ids and back, vectorised with numpy, saved as JSON.

Three kinds share one `Tokenizer` protocol:

- `char`: one id per distinct character of the training text, in code-point order. The
  vocabulary is built once (from all the text being prepared) and saved; it is never
  rebuilt per file, so training, validation and sampling agree on every id.
- `byte`: the 256 byte values of the UTF-8 encoding. Needs no vocabulary.
- `bpe`: byte-level BPE trained locally with the optional `tokenizers` package
  (`pip install 'hookloop[bpe]'`).

`save(path)` writes JSON (never pickle); `load_tokenizer(path)` reads any kind back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from hookloop.errors import DataError
from hookloop.filecheck import field, read_json

__all__ = [
    "TOKENIZER_KINDS",
    "BpeTokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "Tokenizer",
    "build_tokenizer",
    "load_tokenizer",
]

TOKENIZER_KINDS = ("char", "byte", "bpe")
FORMAT_VERSION = 1


@runtime_checkable
class Tokenizer(Protocol):
    """What the recipe needs from a tokenizer."""

    kind: str

    @property
    def vocab_size(self) -> int:
        """Number of distinct ids; every id is in `[0, vocab_size)`."""
        ...

    def encode(self, text: str) -> np.ndarray:
        """The token ids of `text`, a 1-D integer array."""
        ...

    def decode(self, ids: Any) -> str:
        """The text of a sequence of ids (any integer sequence or array)."""
        ...

    def to_json(self) -> dict[str, Any]:
        """The JSON-serialisable description `load_tokenizer` reads back."""
        ...

    def save(self, path: str | Path) -> Path:
        """Write the tokenizer as JSON to `path`."""
        ...


class _JsonSave:
    def save(self, path: str | Path) -> Path:
        """Write the tokenizer as JSON to `path`."""
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False), encoding="utf-8")  # type: ignore[attr-defined]
        return path


class CharTokenizer(_JsonSave):
    """One id per character of a fixed alphabet.

    Args:
        chars: The alphabet, one character per id, in id order.
    """

    kind = "char"

    def __init__(self, chars: str | list[str]) -> None:
        chars = list(chars)
        if len(set(chars)) != len(chars) or not all(len(c) == 1 for c in chars):
            raise DataError("char tokenizer: the alphabet must be distinct single characters")
        if not chars:
            raise DataError("char tokenizer: the alphabet is empty; the text has no characters")
        self.chars = chars
        self._codes = np.array([ord(c) for c in chars], dtype=np.uint32)
        # code point -> id lookup table; -1 marks characters outside the alphabet
        self._lut = np.full(int(self._codes.max()) + 2, -1, dtype=np.int64)
        self._lut[self._codes] = np.arange(len(chars))

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The alphabet of `text`: its distinct characters in code-point order."""
        codes = np.unique(_code_points(text))
        return cls([chr(c) for c in codes])

    @property
    def vocab_size(self) -> int:
        """Size of the alphabet."""
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """Ids of every character; a character outside the alphabet is a DataError."""
        codes = _code_points(text)
        ids = self._lut[np.minimum(codes, len(self._lut) - 1)]
        if ids.size and ids.min() < 0:
            unknown = sorted({chr(c) for c in codes[ids < 0][:1000]})[:10]
            raise DataError(
                f"char tokenizer: {int((ids < 0).sum())} character(s) are not in the vocabulary "
                f"of {self.vocab_size}, e.g. {''.join(unknown)!r}; use characters of the "
                "training text (or the byte tokenizer, which encodes anything)"
            )
        return ids

    def decode(self, ids: Any) -> str:
        """The characters of `ids`."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise DataError(f"char tokenizer: ids must be in [0, {self.vocab_size}) to decode")
        return self._codes[ids].astype("<u4").tobytes().decode("utf-32-le")

    def to_json(self) -> dict[str, Any]:
        """`{"kind": "char", "chars": [...]}`."""
        return {"format": FORMAT_VERSION, "kind": "char", "chars": self.chars}


class ByteTokenizer(_JsonSave):
    """The 256 byte values of the UTF-8 encoding: encodes any text, needs no vocabulary."""

    kind = "byte"

    @property
    def vocab_size(self) -> int:
        """Always 256."""
        return 256

    def encode(self, text: str) -> np.ndarray:
        """The UTF-8 bytes of `text` as ids."""
        return np.frombuffer(text.encode("utf-8", errors="surrogatepass"), dtype=np.uint8)

    def decode(self, ids: Any) -> str:
        """The text of the bytes; an incomplete UTF-8 sequence decodes as U+FFFD."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() > 255):
            raise DataError("byte tokenizer: ids must be in [0, 256) to decode")
        return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def to_json(self) -> dict[str, Any]:
        """`{"kind": "byte"}`."""
        return {"format": FORMAT_VERSION, "kind": "byte"}


class BpeTokenizer(_JsonSave):
    """Byte-level BPE from the `tokenizers` package (optional extra `hookloop[bpe]`).

    Args:
        tokenizer: A `tokenizers.Tokenizer`.
    """

    kind = "bpe"

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer

    @classmethod
    def train(cls, text: str, vocab_size: int = 4096) -> BpeTokenizer:
        """Train a byte-level BPE with `vocab_size` ids on `text`, locally."""
        tk = _require_tokenizers()
        tok = tk.Tokenizer(tk.models.BPE())
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(_chunks(text), trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        """Ids in the trained vocabulary."""
        return int(self._tok.get_vocab_size())

    def encode(self, text: str) -> np.ndarray:
        """The BPE ids of `text` (encoded in chunks of lines, in parallel)."""
        encodings = self._tok.encode_batch(list(_chunks(text)))
        return np.fromiter((i for e in encodings for i in e.ids), dtype=np.int64)

    def decode(self, ids: Any) -> str:
        """The text of `ids`."""
        return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)])

    def to_json(self) -> dict[str, Any]:
        """`{"kind": "bpe", "tokenizer": <the tokenizers package's own JSON>}`."""
        return {
            "format": FORMAT_VERSION,
            "kind": "bpe",
            "tokenizer": json.loads(self._tok.to_str()),
        }


def build_tokenizer(kind: str, text: str, *, vocab_size: int = 4096) -> Tokenizer:
    """Build a tokenizer of `kind` from `text` (its alphabet, or a trained BPE).

    Raises:
        DataError: an unknown kind, or `bpe` without the `tokenizers` package.
    """
    if kind == "char":
        return CharTokenizer.from_text(text)
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        return BpeTokenizer.train(text, vocab_size=vocab_size)
    raise DataError(f"unknown tokenizer {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}")


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a tokenizer saved by `save()`.

    Raises:
        DataError: the file is missing, not JSON, or of an unknown kind.
    """
    path = Path(path)
    fix = "prepare the data again (`hookloop prepare`) or copy the run's tokenizer.json back"
    try:
        data = read_json(path, DataError, fix=fix)
    except FileNotFoundError:
        raise DataError(
            f"tokenizer file {path} does not exist; run `hookloop prepare` first"
        ) from None
    kind = field(data, "kind", "str", file=path, error=DataError, fix=fix)
    if kind == "char":
        chars = field(data, "chars", "list", file=path, error=DataError, fix=fix)
        if not all(isinstance(c, str) for c in chars):
            raise DataError(f"{path} is malformed: field chars must hold strings; {fix}")
        try:
            return CharTokenizer(chars)
        except DataError as exc:
            raise DataError(f"{path} is malformed: {exc}; {fix}") from None
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        tk = _require_tokenizers()
        table = field(data, "tokenizer", "dict", file=path, error=DataError, fix=fix)
        try:
            return BpeTokenizer(tk.Tokenizer.from_str(json.dumps(table)))
        except Exception as exc:  # the tokenizers library raises its own Exception type
            first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise DataError(f"{path} is malformed: field tokenizer: {first}; {fix}") from None
    raise DataError(
        f"tokenizer file {path} has unknown kind {kind!r}; "
        f"expected one of {', '.join(TOKENIZER_KINDS)}"
    )


def _code_points(text: str) -> np.ndarray:
    # UTF-32 gives one fixed-width code point per character, without a Python-level loop.
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)


def _chunks(text: str, size: int = 1 << 16) -> Any:
    """Pieces of about `size` characters, cut after a newline where there is one."""
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = text.rfind("\n", start, end)
            end = cut + 1 if cut > start else end
        yield text[start:end]
        start = end


def _require_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise DataError(
            "the bpe tokenizer needs the optional `tokenizers` package: "
            "pip install 'hookloop[bpe]' (or use --tokenizer char or byte)"
        ) from None
    return tokenizers
