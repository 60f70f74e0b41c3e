"""Logging is configured by the CLI only, never behind a library user's back."""

from __future__ import annotations

import json
import subprocess
import sys


def test_import_and_fit_do_not_configure_structlog():
    code = (
        "import structlog, torch, hookloop\n"
        "from hookloop import Engine\n"
        "m = torch.nn.Linear(2, 2)\n"
        "e = Engine(m, torch.optim.SGD(m.parameters(), lr=0.1), [(torch.ones(1, 2),) * 2],\n"
        "           loss_fn=lambda m, b: m(b[0]).sum())\n"
        "e.fit(max_steps=1)\n"
        "print(structlog.is_configured())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_json_format_prints_one_json_object_per_line(capsys):
    import io

    import structlog

    from hookloop.logs import configure_logging

    stream = io.StringIO()
    try:
        configure_logging("json", stream=stream)
        structlog.get_logger("hookloop").info("step", loss=1.5)
        record = json.loads(stream.getvalue().strip())
        assert record["event"] == "step" and record["loss"] == 1.5 and record["level"] == "info"
        stream.truncate(0)
        stream.seek(0)
        configure_logging("console", stream=stream)
        structlog.get_logger("hookloop").info("step", loss=1.5)
        assert "step" in stream.getvalue() and "loss=1.5" in stream.getvalue()
    finally:
        structlog.reset_defaults()


def test_debug_lines_stay_hidden_from_python_use_as_from_the_cli():
    """Unconfigured structlog prints every level; the library's default is info, as the
    CLI's: `plugin_cost_ms_per_step` appears only once structlog is configured for debug."""
    code = (
        "import sys, structlog, torch\n"
        "from hookloop import Engine\n"
        "from hookloop.plugins.clip import GradClip\n"
        "if sys.argv[1] == 'debug':\n"
        "    from hookloop.logs import configure_logging\n"
        "    configure_logging(level='debug')\n"
        "m = torch.nn.Linear(2, 2)\n"
        "e = Engine(m, torch.optim.SGD(m.parameters(), lr=0.1), [(torch.ones(1, 2),) * 2],\n"
        "           loss_fn=lambda m, b: m(b[0]).sum(), plugins=[GradClip()])\n"
        "e.fit(max_steps=3)\n"
    )
    run = [sys.executable, "-c", code]
    quiet = subprocess.run([*run, "default"], capture_output=True, text=True, check=True)
    assert "debug" not in quiet.stdout + quiet.stderr
    loud = subprocess.run([*run, "debug"], capture_output=True, text=True, check=True)
    assert "plugin_cost_ms_per_step" in loud.stdout + loud.stderr
