"""Tokenizers: text to token ids and back, vectorised with numpy, saved as JSON.

Three kinds share one `Tokenizer` protocol:

- `char`: one id per distinct character of the training text, in code-point order. The
  vocabulary is built once (from all the text being prepared) and saved; it is never
  rebuilt per file, so training, validation and sampling agree on every id.
- `byte`: the 256 byte values of the UTF-8 encoding, plus id 256 for the end-of-text token
  that separates documents (a `byte` tokenizer saved without it has 256 ids).
- `bpe`: byte-level BPE trained locally with the optional `tokenizers` package
  (`pip install '.[bpe]' in the hookloop checkout`), with the special token `<|endoftext|>`
  between documents.

`eot_id` is the id of the end-of-text token, or None for a tokenizer without one (`char`).

`save(path)` writes JSON (never pickle); `load_tokenizer(path)` reads any kind back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from hookloop.errors import DataError
from hookloop.filecheck import field, read_json

__all__ = [
    "EOT_TEXT",
    "TOKENIZER_KINDS",
    "BpeTokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "Tokenizer",
    "build_tokenizer",
    "load_tokenizer",
    "cut_pieces",
    "safe_cut",
]

TOKENIZER_KINDS = ("char", "byte", "bpe")
FORMAT_VERSION = 1
EOT_TEXT = "<|endoftext|>"
"""The BPE special token that separates documents."""


@runtime_checkable
class Tokenizer(Protocol):
    """What the recipe needs from a tokenizer."""

    kind: str
    eot_id: int | None
    """The end-of-text id placed between documents, or None when the tokenizer has none."""

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
    eot_id = None

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
        # The fast path for ASCII text: a byte translation table (in an alphabet in code-point
        # order ASCII characters come first, so their ids are below 128); 255 marks a
        # character outside the alphabet, or one whose id does not fit in a byte.
        ascii_ids = self._lut[:128].tolist() + [-1] * (128 - min(128, len(self._lut)))
        self._ascii_table = bytes([i if 0 <= i < 255 else 255 for i in ascii_ids] + [255] * 128)
        self._ids_dtype = np.uint16 if len(chars) <= 1 << 16 else np.uint32

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
        if text.isascii():
            return self.encode_utf8(text.encode("ascii"))
        return self._encode_code_points(text)

    def _encode_code_points(self, text: str) -> np.ndarray:
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

    def encode_utf8(self, data: bytes) -> np.ndarray:
        """`encode` of the text whose UTF-8 encoding is `data` (whole characters).

        ASCII bytes go through a translation table, without decoding. The same pass drops
        the continuation bytes of multi-byte characters and marks their first bytes (255,
        like characters outside the alphabet); only the non-ASCII bytes are then decoded,
        so mostly-ASCII text costs about what ASCII does.
        """
        mapped = data.translate(self._ascii_table, _CONTINUATION_BYTES)
        if 255 not in mapped:
            return np.frombuffer(mapped, dtype=np.uint8)
        marked = np.flatnonzero(np.frombuffer(mapped, dtype=np.uint8) == 255)
        # The non-ASCII bytes alone are still whole UTF-8 characters, in text order.
        codes = _code_points(data.translate(None, _ASCII_BYTES).decode("utf-8", "surrogatepass"))
        found = self._lut[np.minimum(codes, len(self._lut) - 1)]
        if codes.size < marked.size or found.min() < 0:  # unknown characters (this raises,
            # naming them) or ASCII ones whose ids are above 254 (in an alphabet out of order)
            return self._encode_code_points(data.decode("utf-8", "surrogatepass"))
        ids = np.frombuffer(mapped, dtype=np.uint8).astype(self._ids_dtype)
        ids[marked] = found
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
    """The 256 byte values of the UTF-8 encoding: encodes any text, needs no vocabulary.

    Args:
        eot: Add id 256, the end-of-text token between documents (257 ids in all).
    """

    kind = "byte"

    def __init__(self, eot: bool = False) -> None:
        self.eot_id = 256 if eot else None

    @property
    def vocab_size(self) -> int:
        """256, or 257 with the end-of-text id."""
        return 256 if self.eot_id is None else 257

    def encode(self, text: str) -> np.ndarray:
        """The UTF-8 bytes of `text` as ids."""
        return self.encode_utf8(text.encode("utf-8", errors="surrogatepass"))

    def encode_utf8(self, data: bytes) -> np.ndarray:
        """The ids of the text whose UTF-8 encoding is `data`: its bytes."""
        return np.frombuffer(data, dtype=np.uint8)

    def decode(self, ids: Any) -> str:
        """The text of the bytes (end-of-text ids left out); an incomplete UTF-8 sequence
        decodes as U+FFFD."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise DataError(f"byte tokenizer: ids must be in [0, {self.vocab_size}) to decode")
        if self.eot_id is not None:
            ids = ids[ids != self.eot_id]
        return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def to_json(self) -> dict[str, Any]:
        """`{"kind": "byte", "eot_id": 256}` (no `eot_id`: 256 ids, no end-of-text)."""
        data: dict[str, Any] = {"format": FORMAT_VERSION, "kind": "byte"}
        if self.eot_id is not None:
            data["eot_id"] = self.eot_id
        return data


class BpeTokenizer(_JsonSave):
    """Byte-level BPE from the `tokenizers` package (the optional `bpe` extra).

    Args:
        tokenizer: A `tokenizers.Tokenizer`.
    """

    kind = "bpe"

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self.eot_id: int | None = tokenizer.token_to_id(EOT_TEXT)

    @classmethod
    def train(cls, text: str | Iterable[str], vocab_size: int = 4096) -> BpeTokenizer:
        """Train a byte-level BPE with `vocab_size` ids, locally, on `text` (one string, or
        an iterable of pieces cut where `safe_cut` says, read once)."""
        tk = _require_tokenizers()
        tok = tk.Tokenizer(tk.models.BPE())
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[EOT_TEXT],
            show_progress=False,
        )
        pieces = _chunks(text) if isinstance(text, str) else text
        tok.train_from_iterator(pieces, trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        """Ids in the trained vocabulary."""
        return int(self._tok.get_vocab_size())

    def encode(self, text: str) -> np.ndarray:
        """The BPE ids of `text` (encoded in pieces cut at safe points, in parallel)."""
        parts = self.encode_each(list(_chunks(text)))
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def encode_each(self, texts: list[str]) -> list[np.ndarray]:
        """The ids of each text, encoded together with the package's parallel batch encode."""
        return [np.array(e.ids, dtype=np.uint32) for e in self._tok.encode_batch_fast(texts)]

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
        return ByteTokenizer(eot=True)
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
        return ByteTokenizer(eot=data.get("eot_id") == 256)
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


_ASCII_BYTES = bytes(range(0x80))
_CONTINUATION_BYTES = bytes(range(0x80, 0xC0))  # the bytes after the first of a character


def _code_points(text: str) -> np.ndarray:
    # UTF-32 gives one fixed-width code point per character, without a Python-level loop.
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)


# Cut points where byte-level BPE's pre-tokenizer (GPT-2's pattern) splits the text the same
# way whether or not it is cut there: after a newline between two non-space characters;
# before a single space between two non-space characters; between a letter and a symbol
# (not an apostrophe, which may start a contraction such as 's).
_SAFE_CUT = re.compile(
    r"(?<=\S\n)(?=\S)|(?<=\S)(?= \S)|(?<=[^\W\d_])(?=[^\w\s'])|(?<=[^\w\s'])(?=[^\W\d_])"
)
_CUT_WINDOW = 1 << 12


def safe_cut(text: str, end: int, start: int = 0) -> int | None:
    """The last position in `text[start+1:end+1]` where cutting the text does not change
    its BPE tokens, looking back at most 4096 characters from `end`; None if there is none."""
    cut = None
    for match in _SAFE_CUT.finditer(text, max(start + 1, end - _CUT_WINDOW), end):
        cut = match.start()
    return cut if cut is not None and cut > start else None


def cut_pieces(text: str, size: int, *, final: bool = True) -> tuple[list[str], str]:
    """`text` in pieces of about `size` characters cut only at safe points (`safe_cut`),
    and the rest. A stretch with no safe point is kept whole up to 64 pieces' worth, then
    cut hard. With `final` the rest is the last piece; otherwise it is returned to be
    continued by the text that follows."""
    pieces, start, longest = [], 0, 64 * size
    while len(text) - start > size:
        cut = safe_cut(text, start + size, start)
        if cut is None:  # look ahead for the next safe point
            match = _SAFE_CUT.search(text, start + size, start + longest)
            if match:
                cut = match.start()
            elif len(text) - start > longest:
                cut = start + longest  # no safe point in 64 pieces: cut hard
            else:
                break  # the rest is one piece, or waits for the text that follows
        pieces.append(text[start:cut])
        start = cut
    rest = text[start:]
    if final and rest:
        pieces.append(rest)
        rest = ""
    return pieces, rest


def _chunks(text: str, size: int = 1 << 16) -> Iterator[str]:
    """Pieces of about `size` characters, cut where `safe_cut` says."""
    return iter(cut_pieces(text, size)[0])


def _require_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise DataError(
            "the bpe tokenizer needs the optional `tokenizers` package: "
            "pip install '.[bpe]' in the hookloop checkout (or use --tokenizer char or byte)"
        ) from None
    return tokenizers
