"""The one schema check every file goes through: the file and the field in each message."""

from __future__ import annotations

import re

import pytest

from hookloop.errors import DataError
from hookloop.filecheck import field, read_json, read_text, short

FIX = "make it again"


def test_read_json_names_the_file_and_why(tmp_path):
    path = tmp_path / "x.json"
    with pytest.raises(FileNotFoundError):  # the caller says what a missing file means
        read_json(path, DataError, fix=FIX)
    for content, why in [
        (b"\xff", "is not UTF-8 text (byte 0); make it again"),
        (b"{", "is not valid JSON"),
        (b"[" * 100_000, "nested too deeply"),
    ]:
        path.write_bytes(content)
        with pytest.raises(DataError, match=re.escape(why)) as info:
            read_json(path, DataError, fix=FIX)
        assert str(path) in str(info.value)
    with pytest.raises(DataError, match="is a directory, not a file"):
        read_text(tmp_path, DataError, fix=FIX)


def test_field_checks_kind_presence_and_range_by_dotted_name():
    data = {"a": {"b": 3, "c": "x"}, "model.safetensors": {"sha256": "0" * 64}, "n": True}
    get = dict(file="f.json", error=DataError, fix=FIX)
    assert field(data, "a.b", "count", **get) == 3
    assert field(data, "model.safetensors", "dict", **get) == {"sha256": "0" * 64}
    assert field(data, "a.z", "int", default=7, **get) == 7
    with pytest.raises(DataError, match="f.json is malformed: field a.z is missing; make"):
        field(data, "a.z", "int", **get)
    with pytest.raises(DataError, match="field a.c must be an integer, got 'x'"):
        field(data, "a.c", "int", **get)
    with pytest.raises(DataError, match="field n must be an integer"):  # a bool is no int
        field(data, "n", "int", **get)
    with pytest.raises(DataError, match="a.c must be an object"):
        field(data, "a.c.d", "int", **get)
    with pytest.raises(DataError, match="the top level must be an object"):
        field([1], "a", "int", **get)
    with pytest.raises(DataError, match="field a.b must be >= 5, got 3"):
        field(data, "a.b", "int", check=lambda v: v >= 5, allowed=">= 5", **get)
    ranks = {"r": [{"x": 1}, {"x": "no"}]}  # a number after a dot indexes a list
    assert field(ranks, "r.0.x", "int", **get) == 1
    with pytest.raises(DataError, match="field r.1.x must be an integer"):
        field(ranks, "r.1.x", "int", **get)
    with pytest.raises(DataError, match="field r.2 is missing"):
        field(ranks, "r.2", "dict", **get)
    with pytest.raises(DataError, match="plain file name"):
        field({"n": "../x"}, "n", "filename", **get)


def test_short_keeps_a_message_on_one_short_line():
    assert short("x" * 100).endswith("...") and len(short("x" * 100)) == 40
    assert short(5) == "5"
