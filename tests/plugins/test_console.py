"""The console plugin: a line every N steps, both renderings, no sync on other steps."""

from __future__ import annotations

import io
import json

import pytest
import structlog
import torch

from hookloop import PluginError, hookimpl
from hookloop.logs import configure_logging
from hookloop.plugins.clip import GradClip
from hookloop.plugins.console import Console
from hookloop.plugins.schedule import LRSchedule


@pytest.fixture
def log_stream():
    stream = io.StringIO()
    yield stream
    structlog.reset_defaults()


def test_json_lines_every_n_steps_with_all_fields(make_engine, log_stream):
    configure_logging("json", stream=log_stream)
    engine = make_engine(
        batches=10, plugins=[GradClip(), LRSchedule(warmup_steps=2), Console(every=4)]
    )
    engine.fit(max_steps=10)
    records = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    train = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in train] == [4, 8, 10]  # every 4, and the last step
    for r in train:
        assert {
            "loss",
            "ema_loss",
            "ppl",
            "lr",
            "grad_norm",
            "tokens_per_s",
            "elapsed",
            "eta",
        } <= set(r)
        assert r["ppl"] == pytest.approx(torch.tensor(r["loss"]).exp().item(), rel=1e-3)
    assert train[-1]["eta"] == "0:00:00"
    assert [r["event"] for r in records].count("fit_end") == 1


def test_human_key_value_lines(make_engine, log_stream):
    configure_logging("console", stream=log_stream)
    make_engine(batches=4, plugins=[Console(every=2)]).fit(max_steps=4)
    lines = [line for line in log_stream.getvalue().splitlines() if " train " in line]
    assert len(lines) == 2
    assert "step=2" in lines[0] and "loss=" in lines[0] and "ema_loss=" in lines[0]
    assert not lines[0].lstrip().startswith("{")


def test_eval_results_are_logged(make_engine, log_stream):
    configure_logging("json", stream=log_stream)
    engine = make_engine(batches=2, plugins=[Console()])
    engine.fit(max_steps=2)
    engine.evaluate()
    evals = [json.loads(x) for x in log_stream.getvalue().splitlines() if '"eval"' in x]
    assert evals and {"val_loss", "val_ppl", "step"} <= set(evals[0])


class CountingTensor(torch.Tensor):
    """A loss tensor that records the step at which anything reads its value on the host."""

    reads: list[int] = []
    step = 0

    def item(self):
        CountingTensor.reads.append(CountingTensor.step)
        return super().item()

    def tolist(self):
        CountingTensor.reads.append(CountingTensor.step)
        return super().tolist()

    def __float__(self):
        CountingTensor.reads.append(CountingTensor.step)
        return super().__float__()


class SwapLoss:
    """Replaces state.loss with a CountingTensor before console sees it."""

    name = "swap_loss"
    before = ("console",)

    @hookimpl
    def after_step(self, state):
        CountingTensor.step = state.step
        state.loss = state.loss.as_subclass(CountingTensor)


def test_loss_is_read_on_logged_steps_only(make_engine, log_stream):
    configure_logging("json", stream=log_stream)
    CountingTensor.reads = []
    make_engine(batches=9, plugins=[SwapLoss(), Console(every=3)]).fit(max_steps=9)
    assert CountingTensor.reads  # the counter works: logged steps do read it
    assert set(CountingTensor.reads) == {3, 6, 9}


@pytest.mark.parametrize(
    ("options", "message"), [({"every": 0}, "every"), ({"ema_beta": 1.0}, "ema_beta")]
)
def test_bad_options_are_named(options, message):
    with pytest.raises(PluginError, match=f"console: option {message}"):
        Console(**options)


def test_lines_do_not_land_on_a_live_progress_bar(make_engine, log_stream, monkeypatch):
    from hookloop.plugins.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()  # stdout and stderr on one terminal, as in a shell
    monkeypatch.setattr("sys.stdout", screen)
    monkeypatch.setattr("sys.stderr", screen)
    monkeypatch.delenv("CI", raising=False)
    configure_logging("console", stream=screen)
    make_engine(batches=6, plugins=[Console(every=3), Progress(refresh_s=0)]).fit(max_steps=6)
    lines = screen.getvalue().replace("\r", "\n").splitlines()
    logged = [line for line in lines if " train " in line]
    assert len(logged) == 2 and all(line[:2].isdigit() for line in logged)  # each on its own line


def test_a_resumed_run_goes_on_with_the_same_ema_loss_as_metrics_csv(
    tiny_lm_data_args, tmp_path, monkeypatch, capsys
):
    """The smoothed loss is saved with each checkpoint: after a resume the console's
    `ema_loss` is the one `metrics.csv` has at that step, not an average started over."""
    import csv

    from hookloop.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOOKLOOP_DISABLE_PLUGIN_AUTOLOAD", "1")
    common = ["--run-dir", "run", *tiny_lm_data_args, "--set", "plugins.console.every=1"]
    assert main(["train", *common, "--set", "training.max_steps=3", "-p", "no:progress"]) == 0
    capsys.readouterr()
    resume = ["train", "--resume", "auto", *common, "--set", "training.max_steps=6"]
    assert main([*resume, "-p", "no:progress"]) == 0
    logged = {
        int(line.split("step=")[1].split()[0]): float(line.split("ema_loss=")[1].split()[0])
        for line in capsys.readouterr().err.splitlines()
        if " train " in line and "ema_loss=" in line
    }
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = {int(r["step"]): float(r["ema_loss"]) for r in csv.DictReader(f)}
    assert sorted(logged) == [4, 5, 6]
    for step, ema in logged.items():
        assert ema == pytest.approx(rows[step], rel=1e-4), (step, ema, rows[step])
