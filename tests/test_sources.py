"""Reading documents from text files, directories, JSON lines, Parquet and datasets."""

from __future__ import annotations

import json
import re

import pytest

from hookloop.errors import DataError
from hookloop.lm.sources import open_source


def texts(source):
    return ["".join(doc) for doc in source.documents()]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_a_text_file_is_one_document_read_in_pieces(tmp_path):
    text = "héllo wörld 日本語 🙂\r\nsecond line\rthird\r\n" * 50
    (tmp_path / "t.txt").write_bytes(text.encode("utf-8"))
    for piece in (1, 2, 3, 5, 7, 4096):
        source = open_source(tmp_path / "t.txt", piece_bytes=piece)
        assert texts(source) == [text.replace("\r\n", "\n").replace("\r", "\n")]
        assert source.count_documents() == 1 and source.bytes_read == len(text.encode())
        (pieces,) = [list(doc) for doc in source.documents(utf8=True)]
        assert all(isinstance(p, bytes) and p.decode("utf-8") for p in pieces)  # whole chars
        assert b"".join(pieces) == texts(source)[0].encode("utf-8")


def test_a_directory_reads_each_file_by_its_suffix_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("plain")
    write_jsonl(tmp_path / "a.jsonl", [{"text": "one"}, {"text": "two", "id": 3}])
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.md").write_text("markdown")
    (tmp_path / ".hidden").write_text("never")
    source = open_source(tmp_path)
    assert texts(source) == ["one", "two", "plain", "markdown"]
    assert source.count_documents() == 4
    assert texts(open_source(tmp_path, glob="*.md")) == ["markdown"]
    with pytest.raises(DataError, match="no files matching"):
        open_source(tmp_path, glob="*.rst")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ({"text": ""}, "is empty"),
        ({"body": "x"}, "no 'text' field"),
        ({"text": 7}, "is int, not a string"),
        ({"text": None}, "is NoneType, not a string"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_a_bad_json_record_names_its_line(tmp_path, line, problem):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n\n" + json.dumps(line) + "\n")
    with pytest.raises(DataError, match=rf"d.jsonl line 3: .*{problem}") as info:
        texts(open_source(path))
    assert "\n" not in str(info.value)


def test_invalid_json_and_other_fields(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "broken\n')
    with pytest.raises(DataError, match="d.jsonl line 2: not valid JSON"):
        texts(open_source(path))
    write_jsonl(path, [{"body": "a"}, {"body": "b"}])
    assert texts(open_source(path, text_field="body")) == ["a", "b"]


@pytest.mark.parametrize("tail", [b"\xff\xfe", "é".encode()[:1] + b"x", "日".encode()[:2]])
def test_not_utf8_names_the_file_and_byte(tmp_path, tail):
    (tmp_path / "bad.txt").write_bytes("fine téxt\n".encode() * 10 + b"\r" + tail)
    for piece in (16, 3, 1 << 20):
        for utf8 in (False, True):
            with pytest.raises(DataError, match=r"bad.txt is not UTF-8 text .* byte 111\)"):
                list(
                    next(open_source(tmp_path / "bad.txt", piece_bytes=piece).documents(utf8=utf8))
                )


def test_split_tail_cuts_at_a_newline_and_never_inside_a_character(tmp_path):
    text = "".join(f"line {i} é\n" for i in range(100))
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    head, tail = open_source(tmp_path / "t.txt", piece_bytes=5).split_tail(0.1)
    h, t = texts(head)[0], texts(tail)[0]
    assert h + t == text and h.endswith("\n") and 0.05 < len(t) / len(text) < 0.15
    (tmp_path / "one.txt").write_text("é" * 1000, encoding="utf-8")  # no newline at all
    head, tail = open_source(tmp_path / "one.txt").split_tail(0.33)
    assert texts(head)[0] + texts(tail)[0] == "é" * 1000


def test_parquet_rows_are_documents(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"text": ["first", "second", "third"], "n": [1, 2, 3]})
    pq.write_table(table, tmp_path / "d.parquet")
    source = open_source(tmp_path / "d.parquet")
    assert texts(source) == ["first", "second", "third"] and source.count_documents() == 3
    with pytest.raises(DataError, match="no column 'body'"):
        texts(open_source(tmp_path / "d.parquet", text_field="body"))
    pq.write_table(pa.table({"text": ["ok", None]}), tmp_path / "n.parquet")
    with pytest.raises(DataError, match="n.parquet row 2: field 'text' is NoneType"):
        texts(open_source(tmp_path / "n.parquet"))


def test_a_saved_hugging_face_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict({"text": ["alpha", "beta", "gamma"], "label": [0, 1, 0]})
    data.save_to_disk(str(tmp_path / "single"))
    source = open_source(hf_dataset=tmp_path / "single")
    assert texts(source) == ["alpha", "beta", "gamma"] and source.count_documents() == 3
    datasets.DatasetDict({"train": data, "test": data.select([0])}).save_to_disk(
        str(tmp_path / "dict")
    )
    assert texts(open_source(hf_dataset=tmp_path / "dict", split="test")) == ["alpha"]
    with pytest.raises(DataError, match="no split 'valid'"):
        open_source(hf_dataset=tmp_path / "dict", split="valid")
    with pytest.raises(DataError, match="no column 'body'"):
        texts(open_source(hf_dataset=tmp_path / "single", text_field="body"))


def test_hf_dataset_reads_only_a_saved_dataset_and_never_the_network(tmp_path, monkeypatch):
    """A file, a directory of data files or a missing path is refused before `datasets`
    could look anything up (a Hub name, a download): only `save_to_disk` output is read."""
    import socket

    datasets = pytest.importorskip("datasets")

    def no_network(*args, **kwargs):
        raise AssertionError("reached for the network")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(datasets, "load_dataset", no_network)
    (tmp_path / "files").mkdir()
    write_jsonl(tmp_path / "files" / "part.jsonl", [{"text": "x1"}, {"text": "x2"}])
    with pytest.raises(DataError, match="is not a dataset written by save_to_disk"):
        open_source(hf_dataset=tmp_path / "files")
    with pytest.raises(DataError, match="is a file, not a directory written by"):
        open_source(hf_dataset=tmp_path / "files" / "part.jsonl")
    with pytest.raises(DataError, match="does not exist"):
        open_source(hf_dataset=tmp_path / "gpt2")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "dataset_info.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read the saved dataset") as info:
        open_source(hf_dataset=tmp_path / "broken")
    assert "\n" not in str(info.value)


def test_a_split_a_saved_dataset_lacks_is_refused_naming_what_it_has(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict({"text": ["alpha", "beta"]})
    data.save_to_disk(str(tmp_path / "single"))
    with pytest.raises(DataError, match="single saved Dataset with no named splits, not 'test'"):
        open_source(hf_dataset=tmp_path / "single", split="test")
    named = datasets.Dataset.from_dict({"text": ["alpha"]}, split="validation")
    named.save_to_disk(str(tmp_path / "named"))
    assert texts(open_source(hf_dataset=tmp_path / "named", split="validation")) == ["alpha"]
    with pytest.raises(
        DataError, match="only its split 'validation', not 'train'.*--split validation"
    ):
        open_source(hf_dataset=tmp_path / "named", split="train")
    datasets.DatasetDict({"test": data}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(DataError, match=r"no split 'train' \(splits: test\)"):
        open_source(hf_dataset=tmp_path / "dict")


def test_text_that_is_not_valid_unicode_names_the_file_and_line(tmp_path):
    (tmp_path / "s.jsonl").write_text('{"text": "ok"}\n{"text": "a\\ud800b"}\n')
    with pytest.raises(DataError, match=r"s.jsonl line 2: field 'text' is not valid Unicode"):
        texts(open_source(tmp_path / "s.jsonl"))
    (tmp_path / "deep.jsonl").write_text("[" * 100_000 + "\n")
    with pytest.raises(DataError, match="deep.jsonl line 1"):
        texts(open_source(tmp_path / "deep.jsonl"))


def test_a_parquet_file_that_is_not_parquet_or_is_damaged(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    (tmp_path / "x.parquet").write_text("not parquet")
    for source in (open_source(tmp_path / "x.parquet"),) * 2:
        with pytest.raises(DataError, match="x.parquet is not a readable Parquet file"):
            source.count_documents()
        with pytest.raises(DataError, match="x.parquet is not a readable Parquet file"):
            texts(source)
    pq.write_table(
        pa.table({"text": ["x" * 100] * 3000}), tmp_path / "g.parquet", row_group_size=500
    )
    data = (tmp_path / "g.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.parquet is not a readable Parquet file"):
        texts(open_source(tmp_path / "cut.parquet"))
    offset = pq.ParquetFile(tmp_path / "g.parquet").metadata.row_group(2).column(0).data_page_offset
    damaged = bytearray(data)
    damaged[offset + 30 : offset + 400] = b"\xff" * 370  # a page header; the footer is intact
    (tmp_path / "mid.parquet").write_bytes(bytes(damaged))
    with pytest.raises(DataError, match="mid.parquet is corrupt or cut short after row") as info:
        texts(open_source(tmp_path / "mid.parquet"))
    assert "\n" not in str(info.value)


def test_a_string_column_holding_bytes_that_are_not_utf8_names_the_row(tmp_path):
    """Parquet (and Arrow files under a saved dataset) do not check that strings are UTF-8."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    raw = pa.array([b"ok", b"a\xffb"], type=pa.binary())
    table = pa.table({"text": pa.Array.from_buffers(pa.string(), 2, raw.buffers())})
    pq.write_table(table, tmp_path / "u.parquet")
    with pytest.raises(DataError, match=r"u.parquet row 2: text is not valid UTF-8"):
        texts(open_source(tmp_path / "u.parquet"))
    datasets = pytest.importorskip("datasets")
    datasets.Dataset(datasets.table.InMemoryTable(table)).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError, match=r"ds row 2: text is not valid UTF-8"):
        texts(open_source(hf_dataset=tmp_path / "ds"))


@pytest.mark.parametrize("glob", ["/etc/*", "../*", "a/../../*", ""])
def test_a_glob_that_would_leave_the_directory_is_refused(tmp_path, glob):
    """An absolute pattern made pathlib raise NotImplementedError; `..` could reach out."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("a")
    with pytest.raises(DataError, match=re.escape(f"--glob {glob!r} is not a file pattern")):
        open_source(tmp_path / "d", glob=glob)


def test_missing_paths(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_source(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="give a text file"):
        open_source(None)
