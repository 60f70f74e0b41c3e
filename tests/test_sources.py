"""Reading documents from text files, directories, JSON lines, Parquet and datasets."""

from __future__ import annotations

import json

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


def test_a_directory_of_data_files_as_a_dataset(tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "files").mkdir()
    write_jsonl(tmp_path / "files" / "part.jsonl", [{"text": "x1"}, {"text": "x2"}])
    source = open_source(hf_dataset=tmp_path / "files")
    assert texts(source) == ["x1", "x2"]


def test_missing_paths(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_source(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="give a text file"):
        open_source(None)
