"""Nothing is ever unpickled: an AST scan of the installed package for every call that can
unpickle, and every checkpoint-reading path run with the unpicklers booby-trapped."""

from __future__ import annotations

import _pickle
import ast
import importlib.util
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from hookloop import checkpoint as ckpt

PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve"}
"""Modules whose only purpose is (un)pickling: importing one at all is refused."""
PICKLE_ATTRIBUTES = {"read_pickle", "to_pickle", "loads_pickle"}


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_constant(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unpickling_calls(source: str, filename: str = "<source>") -> list[str]:
    """Every place in `source` that imports a pickle module or calls something that can
    unpickle: `torch.load` without `weights_only=True`, `torch.save`, `np.load` with
    `allow_pickle` not False, pandas' pickle readers, `__import__("pickle")`. Aliases
    (`import torch as t`, `from torch import load`) are followed."""
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}  # local name -> dotted origin
    found: list[str] = []

    def where(node: ast.AST) -> str:
        return f"{filename}:{node.lineno}"

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[(a.asname or a.name).split(".")[0]] = (
                    a.name if a.asname else a.name.split(".")[0]
                )
                if a.name.split(".")[0] in PICKLE_MODULES:
                    found.append(f"{where(node)}: import {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            if node.module.split(".")[0] in PICKLE_MODULES:
                found.append(f"{where(node)}: from {node.module} import ...")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in PICKLE_ATTRIBUTES:
            found.append(f"{where(node)}: .{node.attr}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name is None:
            continue
        head, _, rest = name.partition(".")
        full = aliases.get(head, head) + (f".{rest}" if rest else "")
        if full in ("torch.load", "torch.serialization.load") and not _is_constant(
            _keyword(node, "weights_only"), True
        ):
            found.append(f"{where(node)}: {name}(...) without weights_only=True")
        elif full in ("torch.save", "torch.serialization.save"):
            found.append(f"{where(node)}: {name}(...) pickles")
        elif full in ("numpy.load", "numpy.lib.npyio.load"):
            allow = _keyword(node, "allow_pickle")
            if allow is not None and not _is_constant(allow, False):
                found.append(f"{where(node)}: {name}(..., allow_pickle=...)")
        elif full.split(".")[0] in PICKLE_MODULES:
            found.append(f"{where(node)}: {name}(...)")
        elif full in ("__import__", "importlib.import_module") and any(
            isinstance(a, ast.Constant) and str(a.value).split(".")[0] in PICKLE_MODULES
            for a in node.args
        ):
            found.append(f"{where(node)}: {name}({node.args[0].value!r})")
    return found


@pytest.mark.parametrize(
    "code",
    [
        "import pickle",
        "import cPickle as p",
        "from pickle import loads",
        "from _pickle import Unpickler",
        "import dill.settings",
        "import torch\ntorch.load(f)",
        "import torch\ntorch.load(f, weights_only=False)",
        "import torch\ntorch.load(f, weights_only=flag)",
        "import torch as t\nt.load(f)",
        "from torch import load\nload(f)",
        "from torch import load as read\nread(f)",
        "import torch.serialization\ntorch.serialization.load(f)",
        "import torch\ntorch.save({'step': 1}, f)",
        "from torch import save\nsave(obj, f)",
        "import numpy as np\nnp.load(f, allow_pickle=True)",
        "import numpy\nnumpy.load(f, allow_pickle=flag)",
        "import pandas as pd\npd.read_pickle(f)",
        "__import__('pickle')",
        "import importlib\nimportlib.import_module('cloudpickle')",
    ],
)
def test_the_scanner_finds_each_way_to_unpickle(code):
    assert unpickling_calls(code), code


@pytest.mark.parametrize(
    "code",
    [
        "import torch\ntorch.load(f, weights_only=True)",
        "import numpy as np\nnp.load(f)",
        "import numpy as np\nnp.load(f, allow_pickle=False)",
        "from safetensors.torch import load_file\nload_file(f)",
        "import json\njson.loads(s)",
        "def load(f):\n    return f\nload(x)",
    ],
)
def test_the_scanner_lets_safe_loads_through(code):
    assert unpickling_calls(code) == []


def installed_sources() -> list[Path]:
    """Every Python file of the installed hookloop package, wherever it is installed from."""
    roots = []
    for package in ("hookloop", "hookloop.plugins"):
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations, package
        roots += [Path(p) for p in spec.submodule_search_locations]
    return sorted({p.resolve() for root in roots for p in root.rglob("*.py")})


def test_no_module_of_the_installed_package_can_unpickle():
    sources = installed_sources()
    names = {p.name for p in sources}
    assert {"engine.py", "read.py", "checkpoint.py", "recipe.py", "resume.py"} <= names
    assert len(sources) > 40
    found = [hit for path in sources for hit in unpickling_calls(path.read_text(), str(path))]
    assert found == []


# --- at run time: every path that reads a checkpoint, with the unpicklers booby-trapped --------


@pytest.fixture
def no_unpickling(monkeypatch):
    """Make every unpickler raise, and record each attempt."""
    import torch._dynamo  # noqa: F401  (imported lazily by the first optimizer: not under the trap)

    attempts: list[str] = []

    def trap(name):
        def refuse(*args, **kwargs):
            attempts.append(name)
            raise AssertionError(f"{name} called: something tried to unpickle")

        return refuse

    def trap_class(module, name):
        # a class, so that a module imported meanwhile can still subclass it
        return type(name, (getattr(module, name),), {"__init__": trap(f"{module.__name__}.{name}")})

    for module, names in (
        (pickle, ("load", "loads", "_load", "_loads")),
        (_pickle, ("load", "loads")),
        (torch, ("load",)),
        (torch.serialization, ("load",)),
    ):
        for name in names:
            monkeypatch.setattr(module, name, trap(f"{module.__name__}.{name}"))
    for module, name in ((pickle, "Unpickler"), (pickle, "_Unpickler"), (_pickle, "Unpickler")):
        monkeypatch.setattr(module, name, trap_class(module, name))
    real_np_load = np.load

    def np_load(*args, allow_pickle=False, **kwargs):
        if allow_pickle:
            trap("numpy.load(allow_pickle=True)")()
        return real_np_load(*args, allow_pickle=allow_pickle, **kwargs)

    monkeypatch.setattr(np, "load", np_load)
    return attempts


def test_the_trap_catches_an_unpickling_load(no_unpickling, tmp_path):
    with pytest.raises(AssertionError, match="unpickle"):
        pickle.loads(b"\x80\x04K\x01.")
    with pytest.raises(AssertionError, match="unpickle"):
        torch.load(tmp_path / "x.pt")
    with pytest.raises(AssertionError, match="unpickle"):
        pickle.Unpickler(io.BytesIO(b"\x80\x04K\x01."))
    assert no_unpickling == ["pickle.loads", "torch.load", "pickle.Unpickler"]


def test_checkpoint_save_verify_read_load_and_fallback_never_unpickle(
    ckpt_worker, tmp_path, no_unpickling
):
    engine = ckpt_worker.build(tmp_path)
    engine.fit(max_steps=4)  # the checkpoint plugin saves steps 2 and 4
    newest = ckpt.latest_valid_checkpoint(tmp_path, journal=engine.journal)
    assert newest.name == ckpt.checkpoint_name(4)
    ckpt.verify_checkpoint(newest)
    state, tensors = ckpt.read_checkpoint(newest)
    assert state["counters"]["step"] == 4 and tensors
    fresh = ckpt_worker.build(tmp_path, seed=5)
    ckpt.load_checkpoint(fresh, newest)
    assert fresh.state.step == 4
    (newest / "state.json").unlink()  # the fallback to an earlier checkpoint reads it too
    assert ckpt.latest_valid_checkpoint(tmp_path).name == ckpt.checkpoint_name(2)
    fresh.fit(max_steps=6)  # resumed training saves again
    assert no_unpickling == []


def test_the_recipe_resume_and_sample_paths_never_unpickle(
    tiny_lm_overrides, tmp_path, no_unpickling
):
    from hookloop.lm.config import load_config
    from hookloop.lm.recipe import build_run, load_trained
    from hookloop.lm.resume import find_resume

    config = load_config(None, [*tiny_lm_overrides, 'plugins.disable=["progress"]'])
    build_run(config, tmp_path).fit()
    run_dir, path = find_resume("auto", tmp_path, tmp_path)
    assert path is not None and path.parent.parent == tmp_path
    model, _, _, used = load_trained(tmp_path)
    assert used == path and sum(p.numel() for p in model.parameters()) > 0
    resumed = build_run(config, tmp_path)
    ckpt.load_checkpoint(resumed.engine, path)
    assert resumed.engine.state.step == 4
    assert no_unpickling == []


def test_a_rollback_to_the_last_checkpoint_never_unpickles(make_engine, tmp_path, no_unpickling):
    from hookloop.plugins.guarding.policy import rollback

    engine = make_engine(batches=10, run_dir=tmp_path)
    engine.fit(max_steps=2)
    ckpt.save_checkpoint(engine, tmp_path / "checkpoints" / ckpt.checkpoint_name(2))
    engine.fit(max_steps=3)
    assert rollback(engine, engine.state, lr_factor=0.5, reason="forced", by="test") == 2
    assert no_unpickling == []
