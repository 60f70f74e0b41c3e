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
A bad record (not JSON, or a text field that is missing, empty, not a string or not valid
Unicode, such as a lone surrogate `"\\ud800"` in JSON) is a `DataError` naming the file and
line (or row); so is a file named `.parquet` that is not Parquet or is cut short.
`hf_dataset` is only ever read from a local directory written by `save_to_disk`: anything
else is refused, so nothing reaches for the network.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath
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
                    raise DataError(_json_line_problem(path, number, line, exc)) from None
                except RecursionError:
                    raise DataError(
                        f"{path} line {number}: JSON nested too deeply to read; "
                        "fix or remove the line"
                    ) from None
                if isinstance(record, list) and number == 1:
                    raise DataError(_json_array(path))
                if not isinstance(record, dict):
                    raise DataError(
                        f"{path} line {number}: expected a JSON object with a "
                        f"{self.text_field!r} field, got {type(record).__name__}"
                    )
                yield iter((_checked_text(record, self.text_field, f"{path} line {number}"),))

    def _parquet_documents(self, path: Path) -> Iterator[Document]:
        parquet = _parquet_file(path)
        if self.text_field not in parquet.schema_arrow.names:
            raise DataError(
                f"{path} has no column {self.text_field!r} (columns: "
                f"{', '.join(parquet.schema_arrow.names)}); choose one with --text-field"
            )
        row = 0
        batches = parquet.iter_batches(batch_size=1024, columns=[self.text_field])
        while True:
            try:
                batch = next(batches, None)
            except Exception as exc:  # pyarrow raises its own error types for bad files
                raise DataError(
                    f"{path} is corrupt or cut short after row {row} ({_one_line(exc)}); "
                    "write it again or leave it out with --glob"
                ) from None
            if batch is None:
                return
            self.bytes_read += batch.nbytes
            for value in _python_values(batch.column(0), f"{path} row", row):
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
        where = f"dataset {self.files[0]} row"
        table = self.dataset.select_columns([self.text_field]).with_format("arrow")
        for batch in table.iter(batch_size=1024):  # Arrow tables: strings decoded here, checked
            for value in _python_values(batch.column(0), where, row):
                row += 1
                text = _checked_text({self.text_field: value}, self.text_field, f"{where} {row}")
                self.bytes_read += len(text)
                yield iter((text,))


def open_source(
    path: str | Path | None = None,
    *,
    glob: str = "*",
    text_field: str = "text",
    hf_dataset: str | Path | None = None,
    split: str | None = None,
    piece_bytes: int = PIECE_CHARS,
) -> Source:
    """The source at `path` (a file or a directory), or a Hugging Face dataset.

    Args:
        path: A text, JSON-lines or Parquet file, or a directory of them.
        glob: File pattern inside a directory.
        text_field: The field or column with the text (JSON lines, Parquet, datasets).
        hf_dataset: A local directory written by `save_to_disk` (nothing else is accepted,
            so nothing is ever downloaded).
        split: The split to read: of a saved `DatasetDict`, `train` when None; of a single
            saved `Dataset`, None or that dataset's own split name.
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
        DataError: the path does not exist, the directory has no matching file, or `glob`
            is not a pattern inside the directory (empty, absolute, or with a `..` part).
    """
    path = Path(path)
    if path.is_dir():
        pattern = PurePath(glob)
        if not glob or pattern.is_absolute() or pattern.anchor or ".." in pattern.parts:
            raise DataError(
                f"--glob {glob!r} is not a file pattern inside {path}; give one relative to "
                "it, such as '*.txt' or 'part-*/*.jsonl'"
            )
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
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate such as JSON's "\ud800"
            raise DataError(
                f"{where}: field {text_field!r} is not valid Unicode (lone surrogate "
                f"{value[exc.start]!r} at character {exc.start}); fix or remove the record"
            ) from None
    return value.replace("\r\n", "\n").replace("\r", "\n") if "\r" in value else value


def _count_in_file(path: Path) -> int:
    suffix = path.suffix.lower()
    if suffix in _JSON_SUFFIXES:
        count = 0
        with open(path, "rb") as f:
            for line in f:
                if not count and line.strip()[:1] == b"[":  # not JSON lines: say so first
                    raise DataError(_json_array(path))
                if not count and line.strip() == b"{":
                    raise DataError(_json_spread(path))
                count += bool(line.strip())
        return count
    if suffix == ".parquet":
        return int(_parquet_file(path).metadata.num_rows)
    return 1


def _parquet_file(path: Path) -> Any:
    """`path` opened as a `pyarrow.parquet.ParquetFile`; a DataError if it is not one."""
    pq = _require("pyarrow.parquet", "parquet", "a .parquet file")
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own error types for bad files
        raise DataError(
            f"{path} is not a readable Parquet file ({_one_line(exc)}); write it again or leave it "
            "out with --glob"
        ) from None


_SAVED_MARKERS = ("dataset_info.json", "dataset_dict.json")
"""Files `save_to_disk` writes at the top of a `Dataset` / `DatasetDict` directory."""


def _load_dataset(path: Path, split: str | None) -> Any:
    """The split `split` of the dataset saved with `save_to_disk` at `path`.

    Only `datasets.load_from_disk` is used: it reads local files and never the network
    (`load_dataset` would take a name it cannot find locally for a Hub dataset). A single
    saved `Dataset` has one split: `split` must then be None or that split's name.
    """
    if not path.exists():
        raise DataError(
            f"--hf-dataset {path} does not exist; give a directory written by Dataset.save_to_disk"
        )
    if not path.is_dir():
        raise DataError(
            f"--hf-dataset {path} is a file, not a directory written by Dataset.save_to_disk; "
            f"to prepare the file itself give it as PATH: hookloop prepare {path}"
        )
    if not any((path / marker).is_file() for marker in _SAVED_MARKERS):
        raise DataError(
            f"--hf-dataset {path} is not a dataset written by save_to_disk (it has no "
            f"{' or '.join(_SAVED_MARKERS)}); for a directory of data files give it as "
            f"PATH: hookloop prepare {path}"
        )
    datasets = _require("datasets", "datasets", "--hf-dataset")
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets and pyarrow raise many types for damaged files
        raise DataError(
            f"cannot read the saved dataset {path} ({type(exc).__name__}: {_one_line(exc)}); "
            "save it again with save_to_disk"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        wanted = "train" if split is None else split
        if wanted not in loaded:
            raise DataError(
                f"dataset {path} has no split {wanted!r} (splits: {', '.join(loaded)}); "
                "choose one with --split"
            )
        return loaded[wanted]
    own = None if loaded.split is None else str(loaded.split)
    if split is not None and split != own:
        has = f"only its split {own!r}" if own else "no named splits"
        raise DataError(
            f"dataset {path} is a single saved Dataset with {has}, not {split!r}; "
            "leave out --split" + (f" or pass --split {own}" if own else "")
        )
    return loaded


def _python_values(column: Any, where: str, first: int) -> list[Any]:
    """The values of an Arrow column as Python objects; a DataError naming the row (counted
    from `first + 1`) of a string that is not valid UTF-8 (Parquet does not check it)."""
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        for index in range(len(column)):
            try:
                column[index].as_py()
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{where} {first + index + 1}: text is not valid UTF-8 ({exc.reason} at "
                    f"byte {exc.start}); fix or remove the record"
                ) from None
        raise  # every value decoded one by one: not the error this function knows about


def _one_line(exc: BaseException) -> str:
    """A third-party error's message on one line (pyarrow's can span several)."""
    return " ".join(str(exc).split())


def _require(module: str, extra: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(
            f"{what} needs the optional `{module.split('.')[0]}` package: "
            f"pip install '.[{extra}]' in the hookloop checkout"
        ) from None


def _json_array(path: Path) -> str:
    """The message for a file that holds one JSON array instead of JSON lines."""
    return (
        f"{path} holds one JSON array, not JSON lines (one object per line); write one "
        'record per line, e.g. python -c "import json, sys; [print(json.dumps(r)) for r in '
        f'json.load(sys.stdin)]" < {path.name} > {path.stem}-lines.jsonl'
    )


def _json_spread(path: Path) -> str:
    """The message for a file that holds one JSON document over several lines."""
    return (
        f"{path} holds one JSON document spread over several lines, not JSON lines (one "
        "object per line); write each record on one line"
    )


def _json_line_problem(path: Path, number: int, line: bytes, exc: ValueError) -> str:
    """What is wrong with a line of a JSON lines file that does not parse: a JSON array or
    a document spread over several lines (not JSON lines at all), a last line cut off, or
    a line that is not JSON."""
    first = line.lstrip()[:1]
    if number == 1 and first == b"[":
        return _json_array(path)
    if number == 1 and line.strip() == b"{":
        return _json_spread(path)
    end = len(line.rstrip(b"\r\n"))
    unfinished = isinstance(exc, json.JSONDecodeError) and (
        exc.msg.startswith("Unterminated string") or exc.pos >= end - 1
    )
    if not line.endswith(b"\n") and unfinished:
        return (
            f"{path} line {number} is cut off: the file ends in the middle of a record (was "
            "it still being written?); complete or remove the line"
        )
    return f"{path} line {number}: not valid JSON ({exc}); fix or remove the line"
