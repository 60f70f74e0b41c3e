"""Where text comes from: documents read in bounded pieces from files and datasets.

A *source* is a sequence of documents; each document is read as an iterator of text pieces
of bounded size, so a 2 GB file or a document of any length never sits in memory whole.

| source | documents |
| --- | --- |
| a text file (any other suffix) | the whole file is one document |
| `.jsonl` / `.json` (JSON lines) | one per line, the string under `text_field` |
| `.parquet` | one per row, the string column `text_field` (needs `pyarrow`) |
| a directory | its files matching `glob`, in sorted path order (hidden ones skipped), each read by its suffix as above |
| a Hugging Face dataset (`hf_dataset=`) | one per row of `split`, the string column `text_field` (needs `datasets`) |

Text files are read as UTF-8 with universal newlines (`\\r\\n` and `\\r` become `\\n`).
A bad record (not JSON, or a text field that is missing, empty or not a string) is a
`DataError` naming the file and line (or row).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hookloop.errors import DataError

__all__ = ["PIECE_CHARS", "Source", "list_files", "open_source"]

PIECE_CHARS = 1 << 22
"""Default size of a text piece read from a file, in bytes (4 MiB)."""
_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
Document = Iterator[str]  # or Iterator[bytes], see `Source.documents`


@dataclass
class Source:
    """Documents from files (or a Hugging Face dataset), read in pieces.

    Attributes:
        files: The files, in reading order (for a dataset: its path).
        text_field: The field or column holding the text of JSON lines, Parquet and datasets.
        piece_bytes: Bytes read at a time from a text file.
        tail: `(start, stop)` byte range of the only file, when a single text document is
            split by position (see `split_tail`); None reads it whole.
        dataset: A loaded Hugging Face dataset to read rows from (instead of `files`).
        texts: Documents given as strings (instead of `files`), each read as one piece.
    """

    files: list[Path]
    text_field: str = "text"
    piece_bytes: int = PIECE_CHARS
    tail: tuple[int, int | None] | None = None
    dataset: Any = None
    texts: list[str] | None = None
    bytes_read: int = field(default=0, init=False)
    """Bytes read so far (for progress reports)."""

    @property
    def total_bytes(self) -> int:
        """Bytes of all files (of the byte range, for a split text file)."""
        if self.texts is not None:
            return sum(len(t) for t in self.texts)
        if self.dataset is not None:
            return int(self.dataset.data.nbytes)
        if self.tail is not None:
            start, stop = self.tail
            return (stop if stop is not None else self.files[0].stat().st_size) - start
        return sum(f.stat().st_size for f in self.files)

    def count_documents(self) -> int:
        """How many documents `documents()` yields (reads JSON-lines files once, fast)."""
        if self.texts is not None:
            return len(self.texts)
        if self.dataset is not None:
            return len(self.dataset)
        return sum(_count_in_file(f) for f in self.files)

    def documents(self, *, utf8: bool = False) -> Iterator[Document]:
        """Every document, in order, each an iterator of its text pieces.

        Args:
            utf8: Give each piece as its UTF-8 `bytes` instead of a `str` (a text file's
                bytes are then never decoded when they are ASCII: the fast path of the
                `char` and `byte` tokenizers).
        """
        documents = self._documents(utf8)
        if not utf8:
            return documents
        return (
            (p if isinstance(p, bytes) else p.encode("utf-8", "surrogatepass") for p in doc)
            for doc in documents
        )

    def _documents(self, utf8: bool) -> Iterator[Iterator[str | bytes]]:
        self.bytes_read = 0
        if self.texts is not None:
            for text in self.texts:
                self.bytes_read += len(text)
                yield iter((text,) if text else ())
            return
        if self.dataset is not None:
            yield from self._dataset_documents()
            return
        for path in self.files:
            suffix = path.suffix.lower()
            if suffix in _JSON_SUFFIXES:
                yield from self._json_documents(path)
            elif suffix == ".parquet":
                yield from self._parquet_documents(path)
            else:
                yield self._text_bytes(path) if utf8 else self._text_pieces(path)

    def split_tail(self, fraction: float) -> tuple[Source, Source]:
        """A single text file cut in two at the last newline before `1 - fraction` of its
        bytes (searched in the 4096 bytes before it): the head and the tail."""
        path = self.files[0]
        size = path.stat().st_size
        cut = int(size * (1 - fraction))
        low = max(0, cut - 4096)
        with open(path, "rb") as f:
            f.seek(low)
            window = f.read(cut - low + 1)  # up to and including the byte at the cut
        newline = window.rfind(b"\n", 0, cut - low)
        if newline >= 0:
            cut = low + newline + 1
        else:  # no newline nearby: step back to the start of a UTF-8 character
            while cut > low and cut - low < len(window) and 0x80 <= window[cut - low] < 0xC0:
                cut -= 1
        kw = {"text_field": self.text_field, "piece_bytes": self.piece_bytes}
        return Source([path], tail=(0, cut), **kw), Source([path], tail=(cut, None), **kw)

    # --- readers -------------------------------------------------------------------------

    def _text_pieces(self, path: Path) -> Document:
        return (piece.decode("utf-8") for piece in self._text_bytes(path))

    def _text_bytes(self, path: Path) -> Iterator[bytes]:
        """The file's UTF-8 bytes in pieces, checked, with universal newlines, each piece
        ending at a character boundary (ASCII pieces are checked without decoding)."""
        start, stop = self.tail or (0, None)
        held = b""  # an incomplete character, or a "\r" that may be half of "\r\n"
        offset = start  # file offset of the first byte after `held`
        with open(path, "rb") as f:
            f.seek(start)
            while True:
                size = self.piece_bytes if stop is None else min(self.piece_bytes, stop - offset)
                read = f.read(size) if size > 0 else b""
                self.bytes_read += len(read)
                data = held + read if held else read
                if data.isascii():
                    done = len(data)
                else:
                    done = _utf8_prefix(data, final=not read, path=path, at=offset - len(held))
                offset += len(read)
                piece, held = (data, b"") if done == len(data) else (data[:done], data[done:])
                if read and piece.endswith(b"\r"):
                    piece, held = piece[:-1], b"\r" + held
                if b"\r" in piece:
                    piece = piece.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
                if piece:
                    yield piece
                if not read:
                    return

    def _json_documents(self, path: Path) -> Iterator[Document]:
        with open(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                self.bytes_read += len(line)
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise DataError(f"{path} line {number}: not valid JSON ({exc})") from None
                if not isinstance(record, dict):
                    raise DataError(
                        f"{path} line {number}: expected a JSON object with a "
                        f"{self.text_field!r} field, got {type(record).__name__}"
                    )
                yield iter((_checked_text(record, self.text_field, f"{path} line {number}"),))

    def _parquet_documents(self, path: Path) -> Iterator[Document]:
        pq = _require("pyarrow.parquet", "parquet", "a .parquet file")
        try:
            parquet = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises its own error types for bad files
            raise DataError(f"{path} is not a readable Parquet file: {exc}") from None
        if self.text_field not in parquet.schema_arrow.names:
            raise DataError(
                f"{path} has no column {self.text_field!r} (columns: "
                f"{', '.join(parquet.schema_arrow.names)}); choose one with --text-field"
            )
        row = 0
        for batch in parquet.iter_batches(batch_size=1024, columns=[self.text_field]):
            self.bytes_read += batch.nbytes
            for value in batch.column(0).to_pylist():
                row += 1
                record = {self.text_field: value}
                yield iter((_checked_text(record, self.text_field, f"{path} row {row}"),))

    def _dataset_documents(self) -> Iterator[Document]:
        if self.text_field not in self.dataset.column_names:
            raise DataError(
                f"dataset {self.files[0]} has no column {self.text_field!r} (columns: "
                f"{', '.join(self.dataset.column_names)}); choose one with --text-field"
            )
        row = 0
        for batch in self.dataset.iter(batch_size=1024):
            for value in batch[self.text_field]:
                row += 1
                text = _checked_text({self.text_field: value}, self.text_field, f"row {row}")
                self.bytes_read += len(text)
                yield iter((text,))


def open_source(
    path: str | Path | None = None,
    *,
    glob: str = "*",
    text_field: str = "text",
    hf_dataset: str | Path | None = None,
    split: str = "train",
    piece_bytes: int = PIECE_CHARS,
) -> Source:
    """The source at `path` (a file or a directory), or a Hugging Face dataset.

    Args:
        path: A text, JSON-lines or Parquet file, or a directory of them.
        glob: File pattern inside a directory.
        text_field: The field or column with the text (JSON lines, Parquet, datasets).
        hf_dataset: A dataset saved with `save_to_disk`, or a directory of data files for
            `datasets.load_dataset` (read locally; nothing is downloaded).
        split: The split of a dataset with several.
        piece_bytes: Bytes read at a time from a text file.

    Raises:
        DataError: nothing to read, or a missing optional package.
    """
    if hf_dataset is not None:
        return Source(
            [Path(hf_dataset)],
            text_field=text_field,
            dataset=_load_dataset(Path(hf_dataset), split),
        )
    if path is None:
        raise DataError("give a text file, a directory, or --hf-dataset PATH")
    return Source(list_files(path, glob), text_field=text_field, piece_bytes=piece_bytes)


def list_files(path: str | Path, glob: str = "*") -> list[Path]:
    """`path` itself, or the files matching `glob` under a directory in sorted path order
    (hidden ones skipped), so the order does not depend on the file system's listing.

    Raises:
        DataError: the path does not exist, or the directory has no matching file.
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
    return files


def _utf8_prefix(data: bytes, *, final: bool, path: Path, at: int) -> int:
    """How many bytes of `data` are whole UTF-8 characters (the rest starts a character
    that the next read completes); a DataError naming the byte if it is not UTF-8."""
    try:
        return codecs.utf_8_decode(data, "strict", final)[1]
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 text ({exc.reason} near byte {at + exc.start}); "
            "convert it or leave it out with --glob"
        ) from None


def _checked_text(record: dict[str, Any], text_field: str, where: str) -> str:
    if text_field not in record:
        raise DataError(
            f"{where}: no {text_field!r} field (fields: {', '.join(map(str, record)) or 'none'}); "
            "choose the text field with --text-field"
        )
    value = record[text_field]
    if not isinstance(value, str):
        raise DataError(
            f"{where}: field {text_field!r} is {type(value).__name__}, not a string; "
            "fix or remove the record"
        )
    if not value:
        raise DataError(f"{where}: field {text_field!r} is empty; fix or remove the record")
    return value.replace("\r\n", "\n").replace("\r", "\n") if "\r" in value else value


def _count_in_file(path: Path) -> int:
    suffix = path.suffix.lower()
    if suffix in _JSON_SUFFIXES:
        count = 0
        with open(path, "rb") as f:
            for line in f:
                count += bool(line.strip())
        return count
    if suffix == ".parquet":
        pq = _require("pyarrow.parquet", "parquet", "a .parquet file")
        return int(pq.ParquetFile(path).metadata.num_rows)
    return 1


def _load_dataset(path: Path, split: str) -> Any:
    datasets = _require("datasets", "datasets", "--hf-dataset")
    if not path.exists():
        raise DataError(f"dataset {path} does not exist; give a saved dataset or data files")
    try:
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(str(path), split=split)
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"cannot read dataset {path}: {exc}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(
                f"dataset {path} has no split {split!r} (splits: {', '.join(loaded)}); "
                "choose one with --split"
            )
        loaded = loaded[split]
    return loaded


def _require(module: str, extra: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(
            f"{what} needs the optional `{module.split('.')[0]}` package: "
            f"pip install 'hookloop[{extra}]'"
        ) from None
