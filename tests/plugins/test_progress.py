"""The progress plugin: a bar in a terminal, none in CI or when piped, tqdm optional."""

from __future__ import annotations

import io
import sys

import pytest

from hookloop import PluginError
from hookloop.plugins.progress import Progress
from hookloop.plugins.schedule import LRSchedule


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_in_a_terminal_shows_steps_loss_and_lr(make_engine, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    out = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", out)
    make_engine(batches=5, plugins=[LRSchedule(warmup_steps=1), Progress(refresh_s=0)]).fit(
        max_steps=5
    )
    text = out.getvalue()
    assert "5/5" in text and "loss=" in text and "lr=" in text


@pytest.mark.parametrize("ci", ["", "true"])
def test_auto_is_off_when_piped_or_in_ci(make_engine, monkeypatch, ci):
    out = FakeTerminal() if ci else io.StringIO()
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(sys, "stdout", out)
    plugin = Progress()
    make_engine(batches=2, plugins=[plugin]).fit(max_steps=2)
    assert (
        "2/2" not in out.getvalue() and plugin.bar is None
    )  # (unconfigured structlog prints here)


def test_enabled_true_forces_it_and_false_disables_it(make_engine, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    make_engine(batches=2, plugins=[Progress(enabled=True)]).fit(max_steps=2)
    assert "2/2" in out.getvalue()
    out2 = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", out2)
    make_engine(batches=2, plugins=[Progress(enabled=False)]).fit(max_steps=2)
    assert "2/2" not in out2.getvalue()


def test_without_tqdm_auto_is_silently_off_and_true_is_an_error(make_engine, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(sys, "stdout", FakeTerminal())
    plugin = Progress()
    make_engine(batches=2, plugins=[plugin]).fit(max_steps=2)
    assert plugin.bar is None
    with pytest.raises(
        PluginError, match=r"progress: enabled = true needs tqdm.*pip install '\.\[progress\]'"
    ):
        Progress(enabled=True)


def test_bad_options_are_named():
    with pytest.raises(PluginError, match="progress: option enabled"):
        Progress(enabled="yes")
    with pytest.raises(PluginError, match="progress: option refresh_s"):
        Progress(refresh_s=-1)
