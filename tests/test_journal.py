"""The run journal."""

from __future__ import annotations

import json

from hookloop.journal import Journal


def test_entries_are_appended_as_json_lines(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    journal.record("step_skipped", step=3, reason="non-finite gradient", params=["fc1.weight"])
    journal.record("rollback", step=5, reason="loss spike")
    lines = (tmp_path / "journal.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["step_skipped", "rollback"]
    assert journal.read()[0]["params"] == ["fc1.weight"] and journal.read()[0]["step"] == 3


def test_a_journal_without_a_path_keeps_entries_in_memory():
    journal = Journal()
    journal.record("early_stop", step=1, reason="no improvement")
    assert journal.read() == journal.entries and journal.entries[0]["reason"] == "no improvement"


def test_engine_journal_lives_in_the_run_dir(make_engine, tmp_path):
    engine = make_engine(run_dir=tmp_path / "run")
    engine.journal.record("signal_received", step=0, reason="SIGTERM")
    assert (tmp_path / "run" / "journal.jsonl").is_file()
