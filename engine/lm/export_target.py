"""Where `hookloop export` may write: a new directory, an empty one, or an earlier export.

`export_hf` replaces files by name (`config.json`, `model.safetensors`, `tokenizer.json`,
...) and removes a `tokenizer.json` it did not write this time, so a directory that holds
anything else would lose it. `check_export_target` refuses, before anything is written:

- an existing file, or a path under one: not a directory;
- the run being exported, a folder inside it, or one that contains it: the run's
  `tokenizer.json` and checkpoints would change;
- a run directory (`config.toml`, `journal.jsonl`, `checkpoints/`, ...): its
  `tokenizer.json` would be replaced;
- a checkpoint directory (`state.json`) or a run's `checkpoints/` folder: its
  `model.safetensors` would be replaced;
- a prepared data directory (`meta.json`, `train.bin`, `val.bin`): its `tokenizer.json`
  would be replaced or removed;
- any other non-empty directory that is not an earlier export: something else would be lost.

An earlier export is a directory holding `config.json` and `model.safetensors` and nothing
but the files an export writes (and the temporary files of an interrupted one).
"""

from __future__ import annotations

from pathlib import Path

from hookloop.checkpoint.layout import CHECKPOINTS_DIR, LATEST, STATE_FILE, checkpoint_step
from hookloop.errors import ConfigError
from hookloop.runlock import LOCK_FILE

__all__ = ["EXPORT_FILES", "check_export_target"]

EXPORT_FILES = frozenset(
    {
        "config.json",
        "model.safetensors",
        "hookloop_tokenizer.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }
)
"""Every name `export_hf` writes; an earlier export holds only these."""
_REQUIRED = {"config.json", "model.safetensors"}
_RUN = {"config.toml", "journal.jsonl", "metrics.jsonl", CHECKPOINTS_DIR, LOCK_FILE}
_DATA = {"meta.json", "train.bin", "val.bin"}
_FIX = "pick a new or empty directory (or an earlier export) for --out"


def check_export_target(out: Path, *, run_dir: Path) -> None:
    """Raise a ConfigError unless `export_hf` may write into `out`.

    Args:
        out: The `--out` directory (it need not exist).
        run_dir: The run directory being exported.

    Raises:
        ConfigError: `out` is a file, the run, a folder inside it or containing it, another
            run, a checkpoint, prepared data, or a non-empty directory other than an earlier
            export; the message names which and says to pick a new or empty directory.
    """
    # the deepest part of the path that exists (a dangling link counts: mkdir fails on it)
    existing = next(p for p in [out, *out.parents, Path.cwd()] if p.exists() or p.is_symlink())
    if not existing.is_dir():
        where = "is a file" if existing == out else f"is under {existing}, which is a file"
        raise ConfigError(f"--out {out} {where}, not a directory; {_FIX}")
    target, run = out.resolve(), run_dir.resolve()
    if target == run:
        raise ConfigError(f"--out {out} is the run being exported; {_FIX}")
    if run in target.parents:
        raise ConfigError(f"--out {out} is inside the run being exported ({run_dir}); {_FIX}")
    if target in run.parents:
        raise ConfigError(f"--out {out} contains the run being exported ({run_dir}); {_FIX}")
    if not out.exists():
        return
    names = {p.name for p in out.iterdir()}
    if found := sorted(names & _RUN):
        what = f"a run directory (it holds {', '.join(found)})"
    elif STATE_FILE in names or LATEST in names or any(map(_is_step_dir, out.iterdir())):
        what = "a checkpoint directory (or a run's checkpoints folder)"
    elif found := sorted(names & _DATA):
        what = f"a prepared data directory (it holds {', '.join(found)})"
    elif not names or _is_earlier_export(out, names):
        return
    else:
        foreign = sorted(n for n in names if n not in EXPORT_FILES or not (out / n).is_file())
        foreign = foreign or sorted(names)  # export's names, but config.json or weights missing
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        what = f"not empty and not an earlier export (it holds {shown})"
    raise ConfigError(f"--out {out} is {what}; export would overwrite its files; {_FIX}")


def _is_step_dir(path: Path) -> bool:
    return path.is_dir() and checkpoint_step(path) is not None


def _is_earlier_export(out: Path, names: set[str]) -> bool:
    """Only `EXPORT_FILES` (regular files, the two required ones present), and the dot-named
    temporary files an interrupted `replace_file` of one of them leaves."""
    leftovers = {n for n in names if any(n.startswith(f".{f}.tmp-") for f in EXPORT_FILES)}
    kept = names - leftovers
    return _REQUIRED <= kept <= EXPORT_FILES and all((out / n).is_file() for n in kept)
