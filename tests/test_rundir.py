"""Run directories: made and removed only by whoever made them, moved aside on restart."""

from __future__ import annotations

import pytest

from hookloop.errors import ConfigError
from hookloop.rundir import check_dir_argument, make_dirs, move_aside, remove_created, run_entries
from hookloop.runlock import LOCK_FILE, holds_lock, lock_run_dir


def test_make_dirs_reports_what_it_made_and_remove_created_removes_only_that(tmp_path):
    (tmp_path / "a").mkdir()
    created = make_dirs(tmp_path / "a" / "b" / "c")
    assert created == [tmp_path / "a" / "b" / "c", tmp_path / "a" / "b"]
    lock_run_dir(tmp_path / "a" / "b" / "c")
    remove_created(created)
    assert (tmp_path / "a").is_dir() and not (tmp_path / "a" / "b").exists()
    assert not holds_lock(tmp_path / "a" / "b" / "c")
    assert make_dirs(tmp_path / "a") == []  # it existed: nothing to remove later


def test_remove_created_keeps_a_folder_that_holds_something(tmp_path):
    created = make_dirs(tmp_path / "x" / "y")
    (tmp_path / "x" / "y" / "metrics.csv").write_text("step\n1\n")
    remove_created(created)
    assert (tmp_path / "x" / "y" / "metrics.csv").read_text() == "step\n1\n"


def test_move_aside_keeps_every_file_and_earlier_moves(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step-1").mkdir(parents=True)
    (run / "config.toml").write_text("a")
    (run / LOCK_FILE).write_text("1")
    first = move_aside(run)
    assert run_entries(run) == [first.name]
    assert (first / "config.toml").read_text() == "a" and (first / "checkpoints/step-1").is_dir()
    assert (run / LOCK_FILE).exists() and not (first / LOCK_FILE).exists()
    (run / "config.toml").write_text("b")
    second = move_aside(run)
    assert second != first and sorted(run_entries(run)) == sorted([first.name, second.name])
    assert (second / "config.toml").read_text() == "b" and not (second / first.name).exists()


def test_a_file_is_refused_where_a_directory_goes(tmp_path):
    (tmp_path / "f").write_text("x")
    check_dir_argument("--runs", tmp_path / "nope")  # missing: created later
    with pytest.raises(ConfigError, match="--runs .*f is a file, not a directory"):
        check_dir_argument("--runs", tmp_path / "f")
