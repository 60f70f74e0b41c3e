"""The hookspec module is the reference: every hook documented and shown in the loop."""

from __future__ import annotations

import inspect

from hookloop import hookspecs

SPECS = [
    name
    for name, fn in vars(hookspecs).items()
    if inspect.isfunction(fn) and hasattr(fn, "hookloop_spec")
]


def test_the_core_hooks_exist():
    assert set(SPECS) >= {
        "on_fit_start",
        "before_step",
        "after_backward",
        "after_step",
        "on_epoch_end",
        "on_eval_end",
        "on_fit_end",
        "on_exception",
        "on_save_checkpoint",
        "on_load_checkpoint",
    }


def test_every_hook_says_when_it_fires_what_is_valid_and_its_args():
    for name in SPECS:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        for section in ("Fires:", "Valid:", "Args:"):
            assert section in doc, f"{name} lacks {section!r}"
        for arg in inspect.signature(getattr(hookspecs, name)).parameters:
            assert f"{arg}:" in doc, f"{name} does not document argument {arg!r}"


def test_every_loop_hook_appears_in_the_loop_pseudocode():
    loop = hookspecs.__doc__ or ""
    for name in SPECS:
        assert name in loop, f"{name} is missing from the loop in the module docstring"


def _loop_block(text: str) -> str:
    start = text.index("on_fit_start")
    return text[start : text.index("```", start)].strip()


def test_the_concepts_page_shows_the_same_loop_as_the_hookspecs_docstring():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "concepts.md").read_text()
    assert _loop_block(page) == _loop_block(hookspecs.__doc__ or "")


def test_the_loop_pseudocode_names_methods_the_engine_has():
    import re

    from hookloop import Engine

    named = re.findall(r"(_?[a-z_]+)\(\)", _loop_block(hookspecs.__doc__ or ""))
    assert {"fit", "_run_epoch", "_step", "_forward_backward"} <= set(named)
    for method in named:
        if method.startswith("_") or method == "fit":
            assert hasattr(Engine, method), f"the loop pseudocode names Engine.{method}()"
