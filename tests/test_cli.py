"""The `hookloop` command line, run as a subprocess (forked from the conftest server but for
one real start-up)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pytest


@pytest.fixture
def hookloop_cli(hookloop_cli):
    """Third-party plugins autoload here, as for a user: the example plugin is installed."""
    return functools.partial(hookloop_cli, autoload=True)


def test_help_lists_every_command_without_importing_torch():
    """`--help` stays fast because it imports neither torch nor numpy."""
    code = (
        "import json, sys\nfrom hookloop.cli import COMMANDS, main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')]\n"
        "print(json.dumps({'loaded': loaded, 'commands': list(COMMANDS)}), file=sys.stderr)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    report = json.loads(out.stderr.strip().splitlines()[-1])
    assert report["loaded"] == []
    assert len(report["commands"]) >= 8
    listed = {line.split()[0] for line in out.stdout.splitlines() if line.startswith("    ")}
    assert set(report["commands"]) <= listed


def test_plugins_lists_name_origin_enabled_and_hooks(hookloop_cli):
    out = hookloop_cli("plugins", real=True)  # a real start-up; the others fork (conftest)
    assert out.returncode == 0, out.stderr
    (row,) = [line for line in out.stdout.splitlines() if line.startswith("token_budget")]
    assert "hookloop-example 0.1.0" in row and " yes " in row
    assert "after_step" in row and "on_fit_start" in row


def test_plugins_order_prints_each_hook_with_origins(hookloop_cli):
    out = hookloop_cli("plugins", "--order")
    assert out.returncode == 0, out.stderr
    assert "after_step:" in out.stdout
    assert "token_budget (hookloop-example 0.1.0)" in out.stdout


def test_dash_p_no_disables_a_plugin_without_importing_it(hookloop_cli):
    out = hookloop_cli("plugins", "-p", "no:token_budget")
    (row,) = [line for line in out.stdout.splitlines() if line.startswith("token_budget")]
    assert " no " in row and row.rstrip().endswith("-")


def test_config_file_plugins_table_is_used(hookloop_cli, tmp_path):
    (tmp_path / "run.toml").write_text('[plugins]\ndisable = ["token_budget"]\n')
    out = hookloop_cli("plugins", "-c", "run.toml", cwd=tmp_path)
    (row,) = [line for line in out.stdout.splitlines() if line.startswith("token_budget")]
    assert " no " in row


def test_user_errors_are_one_line_without_traceback(hookloop_cli):
    out = hookloop_cli("plugins", "-p", "no:nope")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "error: unknown plugin 'nope'" in out.stderr and "Traceback" not in out.stderr


def test_missing_config_file_is_a_one_line_error(hookloop_cli, tmp_path):
    out = hookloop_cli("plugins", "-c", "missing.toml", cwd=tmp_path)
    assert out.returncode == 2 and "missing.toml" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_plugin_option_from_config_names_plugin_and_option(hookloop_cli, tmp_path):
    (tmp_path / "run.toml").write_text("[plugins.token_budget]\nbudget = 3\n")
    out = hookloop_cli("plugins", "-c", "run.toml", cwd=tmp_path)
    assert out.returncode == 2
    assert "plugin 'token_budget' has no option 'budget'" in out.stderr


def test_no_command_prints_help(hookloop_cli):
    out = hookloop_cli()
    assert out.returncode == 0 and "COMMAND" in out.stdout


def test_printed_commands_work_as_printed(monkeypatch, tmp_path):
    """`hookloop` when that name finds this installation; else the path it was run by, or
    `python -m hookloop`; words quoted for the shell."""
    from hookloop.cli import command_line

    bin_dir = tmp_path / "venv bin"
    bin_dir.mkdir()
    script = bin_dir / "hookloop"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(script), "train"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # before `source .venv/bin/activate`
    assert command_line("sample", "--run", "runs/a b") == f"'{script}' sample --run 'runs/a b'"
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")  # activated
    assert command_line("sample") == "hookloop sample"
    monkeypatch.setattr(sys, "argv", ["/x/hookloop/__main__.py"])
    assert command_line("eval") == f"{sys.executable} -m hookloop eval"


@pytest.mark.parametrize("command", [["plugins", "--order"], ["plugins"]])
def test_a_reader_that_closes_the_pipe_early_ends_the_command_quietly(command, tmp_path):
    """`hookloop plugins --order | head -3`: status 141 (128 + SIGPIPE), no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte: every write hits EPIPE
    try:
        out = subprocess.run(
            [sys.executable, "-m", "hookloop", *command],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
    finally:
        os.close(write_end)
    assert out.returncode == 141, out.stderr
    assert out.stderr == ""
