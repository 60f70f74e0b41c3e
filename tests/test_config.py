"""Config: defaults, TOML file, --set overrides, every validation error, the TOML writer."""

from __future__ import annotations

import argparse
import tomllib

import pytest

from hookloop.errors import ConfigError
from hookloop.lm.config import (
    SCHEMA,
    config_from_args,
    default_config,
    dumps_toml,
    load_config,
    parse_override,
    write_config,
)


def test_every_key_has_a_default_and_help():
    config = load_config()
    for section, keys in SCHEMA.items():
        for name, key in keys.items():
            assert config[section][name] == key.default
            assert key.help
    assert config["plugins"] == {
        "eval": {"every": 200, "max_batches": 20},
        "schedule": {"warmup_steps": 80, "min_lr": config["optimizer"]["lr"] / 10},
    }


def test_schedule_defaults_follow_the_run_unless_given():
    short = load_config(None, ["training.max_steps=30", "optimizer.lr=1e-3"])
    assert short["plugins"]["schedule"] == {"warmup_steps": 3, "min_lr": 1e-4}
    long = load_config(None, ["training.max_steps=5000"])
    assert long["plugins"]["schedule"]["warmup_steps"] == 100
    given = load_config(None, ["plugins.schedule.warmup_steps=7", "plugins.schedule.min_lr=0"])
    assert given["plugins"]["schedule"] == {"warmup_steps": 7, "min_lr": 0}


def test_file_then_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        "[model]\nn_layers = 2\n[optimizer]\nlr = 3e-4\n[plugins.clip]\nmax_norm = 1.0\n"
    )
    config = load_config(
        path, ["model.n_layers=3", "training.device=cpu", "plugins.clip.max_norm=0.5"]
    )
    assert config["model"]["n_layers"] == 3
    assert config["optimizer"]["lr"] == 3e-4
    assert config["training"]["device"] == "cpu"
    assert config["plugins"]["clip"] == {"max_norm": 0.5}


def test_override_values_are_toml_literals_else_strings():
    assert parse_override("model.d_model=64") == ("model.d_model", 64)
    assert parse_override("optimizer.lr=1e-3") == ("optimizer.lr", 1e-3)
    assert parse_override("training.compile=true") == ("training.compile", True)
    assert parse_override("optimizer.betas=[0.9, 0.99]") == ("optimizer.betas", [0.9, 0.99])
    assert parse_override("data.path=data/my text") == ("data.path", "data/my text")
    assert parse_override('data.path="42"') == ("data.path", "42")


def test_int_is_accepted_for_a_float_key():
    assert load_config(None, ["optimizer.lr=1"])["optimizer"]["lr"] == 1.0


def test_plugin_lists_and_flags():
    args = argparse.Namespace(
        config=None, overrides=['plugins.disable=["csv"]'], plugin_flags=["no:console", "progress"]
    )
    config = config_from_args(args)
    assert config["plugins"]["disable"] == ["csv", "console"]
    assert config["plugins"]["enable"] == ["progress"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.n_layer=6"],
            "unknown config key model.n_layer in --set model.n_layer=6 (did you mean model.n_layers?)",
        ),
        (
            ["modle.n_layers=6"],
            "unknown config section [modle] in --set modle.n_layers=6 (did you mean [model]?)",
        ),
        (["model.n_layers=six"], "config key model.n_layers must be an integer, got 'six' (str)"),
        (["model.n_layers=2.5"], "config key model.n_layers must be an integer, got 2.5 (float)"),
        (["training.compile=1"], "config key training.compile must be true or false, got 1 (int)"),
        (["optimizer.lr=true"], "config key optimizer.lr must be a number, got True (bool)"),
        (["optimizer.betas=[0.9]"], "config key optimizer.betas must be a list of two numbers"),
        (["optimizer.lr=nan"], "config key optimizer.lr must be finite"),
        (["model.n_layers=0"], "config key model.n_layers must be >= 1, got 0"),
        (["model.dropout=1.0"], "config key model.dropout must be in [0, 1), got 1.0"),
        (["optimizer.lr=0"], "config key optimizer.lr must be > 0, got 0.0"),
        (
            ["optimizer.betas=[0.9, 1.5]"],
            "config key optimizer.betas must be two numbers in [0, 1)",
        ),
        (["data.sampling=shuffled"], "config key data.sampling must be one of random, sequential"),
        (
            ["training.precision=fp8"],
            "config key training.precision must be one of fp32, bf16, fp16",
        ),
        (["training.max_steps=-1"], "config key training.max_steps must be >= 0, got -1"),
        (["data.seq_len=256"], "data.seq_len (256) must not exceed model.max_seq_len (64)"),
        (["model.n_heads=5"], "model.n_heads (5) must divide model.d_model"),
        (["training.max_steps=0"], "training.max_steps and training.epochs are both 0"),
        (
            ["training.max_steps=100", "plugins.schedule.warmup_steps=100"],
            "plugins.schedule.warmup_steps (100) must be smaller than training.max_steps (100)",
        ),
        (
            ["plugins.schedule.warmup_steps=50", "plugins.schedule.total_steps=40"],
            "plugins.schedule.warmup_steps (50) must be smaller than plugins.schedule.total_steps (40)",
        ),
        (["plugins.clip=1.0"], "plugins.clip must be a table of options ([plugins.clip])"),
        (["plugins.enable=csv"], "plugins.enable must be a list of plugin names"),
        (["n_layers=3"], "expected SECTION.KEY=VALUE"),
        (["model.n_layers"], "expected SECTION.KEY=VALUE"),
    ],
)
def test_each_error_is_one_clear_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_errors_in_a_file_name_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[training]\nmax_step = 10\n")
    with pytest.raises(
        ConfigError, match=r"training.max_step in .*run.toml \(did you mean training.max_steps\?\)"
    ):
        load_config(path)
    path.write_text("[training\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    path.write_text("model = 3\n")
    with pytest.raises(ConfigError, match=r"section \[model\] must be a table"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_resolved_config_round_trips_through_toml(tmp_path):
    config = load_config(
        None,
        [
            'data.path=some dir/with "quotes" and \\ back',
            "optimizer.lr=3e-4",
            "plugins.schedule.kind=cosine",
            "plugins.schedule.warmup_steps=10",
            "plugins.schedule.min_lr=1e-5",
            'plugins.disable=["csv"]',
            "plugins.nested.a.b=1",
            'plugins.weird.text="tab\there\nnewline é"',
        ],
    )
    path = write_config(config, tmp_path / "config.toml")
    tomllib.loads(path.read_text())  # valid TOML
    assert load_config(path) == config


def test_dump_of_defaults_has_every_section():
    text = dumps_toml(default_config())
    for section in ("[data]", "[model]", "[optimizer]", "[training]", "[plugins.eval]"):
        assert section in text


def test_configuration_page_lists_every_key_with_its_default():
    from pathlib import Path

    from hookloop.lm.config import PLUGIN_DEFAULTS
    from hookloop.lm.toml_writer import _toml_value

    page = (Path(__file__).resolve().parents[1] / "docs" / "guide" / "configuration.md").read_text()
    rows = {
        line.split("|")[1].strip(): line for line in page.splitlines() if line.startswith("| `")
    }
    for section, keys in SCHEMA.items():
        for name, key in keys.items():
            row = rows[f"`{section}.{name}`"]
            assert f"`{_toml_value(key.default)}`" in row, row
    for plugin, options in PLUGIN_DEFAULTS.items():
        for option, value in options.items():
            assert f"`{_toml_value(value)}`" in rows[f"`plugins.{plugin}.{option}`"]
    assert "`plugins.schedule.warmup_steps`" in rows and "`plugins.schedule.min_lr`" in rows


def test_shorten_run_derives_the_warmup_from_the_run_that_happens():
    from hookloop.lm.config import shorten_run

    config = load_config()  # 800 steps: warmup derived as 80
    assert config["plugins"]["schedule"]["warmup_steps"] == 80
    note = shorten_run(config, 20)
    assert config["training"]["max_steps"] == 20 and config["training"]["epochs"] == 0
    assert config["plugins"]["schedule"]["warmup_steps"] == 2  # the same share: a tenth
    assert "80 -> 2" in note
    # an explicit warmup and total keep their share too; a run without warmup keeps none
    config = load_config(
        None,
        ["plugins.schedule.warmup_steps=500", "plugins.schedule.total_steps=2000"],
    )
    shorten_run(config, 40)
    assert config["plugins"]["schedule"]["warmup_steps"] == 10
    assert config["plugins"]["schedule"]["total_steps"] == 40
    config = load_config(None, ["plugins.schedule.warmup_steps=0"])
    assert shorten_run(config, 5) is None and config["plugins"]["schedule"]["warmup_steps"] == 0


def test_a_relative_data_path_is_stored_absolute(tmp_path, monkeypatch):
    from hookloop.lm.config import config_from_args

    monkeypatch.chdir(tmp_path)
    config = config_from_args(argparse.Namespace(overrides=["data.path=data/x"]))
    assert config["data"]["path"] == str(tmp_path / "data" / "x")
    assert config_from_args(argparse.Namespace(overrides=[]))["data"]["path"] == ""
