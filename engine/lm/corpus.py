"""The embedded default corpus: a slice of the Python standard library's own sources.

Every Python install carries its standard library as `.py` files, so `hookloop train` can
train offline on a fresh machine with no download. The slice is deterministic for a given
Python install: the pure-ASCII `.py` files under `sysconfig.get_paths()["stdlib"]` (test
suites and `site-packages` left out), in sorted path order, taken at an even stride across
the library until a byte budget is reached; every tenth file chosen goes to validation.

It is prepared (char-level) once into a cache directory, `$HOOKLOOP_CACHE` or
`$XDG_CACHE_HOME/hookloop` (default `~/.cache/hookloop`), and reused afterwards.
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from pathlib import Path

import structlog

from hookloop.errors import DataError

__all__ = [
    "DEFAULT_BUDGET",
    "cache_dir",
    "default_corpus",
    "is_raw_text",
    "prepared_text",
    "stdlib_files",
    "stdlib_texts",
]

log = structlog.get_logger("hookloop")

DEFAULT_BUDGET = 3_000_000
"""Bytes of source text in the default corpus (train and validation together)."""
VAL_EVERY = 10  # every tenth chosen file is validation text
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def cache_dir() -> Path:
    """Where prepared default corpora are kept."""
    if os.environ.get("HOOKLOOP_CACHE"):
        return Path(os.environ["HOOKLOOP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hookloop"


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """Every candidate `.py` file of the standard library, in sorted path order."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    return sorted(
        p for p in root.rglob("*.py") if not _SKIP_DIRS.intersection(p.relative_to(root).parts[:-1])
    )


def stdlib_texts(
    budget: int = DEFAULT_BUDGET, root: str | Path | None = None
) -> tuple[str, str, list[str]]:
    """The train and validation text of the default corpus and the files it used.

    Files are visited at an even stride over the sorted list (so the slice spans the
    whole library, not just the modules starting with "a"); a file is used when it is
    pure ASCII, until `budget` bytes are collected.
    """
    files = stdlib_files(root)
    if not files:
        raise DataError(
            f"no Python sources found under {root or sysconfig.get_paths()['stdlib']}; "
            "give a corpus with data.path"
        )
    sizes = [f.stat().st_size for f in files]
    stride = max(1, sum(sizes) // budget)
    order = [f for offset in range(stride) for f in files[offset::stride]]
    train, val, used, total = [], [], [], 0
    for f in order:
        if total >= budget:
            break
        data = f.read_bytes()
        if not data.isascii() or not data.strip():
            continue
        text = data.decode("ascii").replace("\r\n", "\n")
        (val if len(used) % VAL_EVERY == VAL_EVERY - 1 else train).append(text)
        used.append(str(f))
        total += len(data)
    return "\n".join(train), "\n".join(val), used


def default_corpus(budget: int = DEFAULT_BUDGET) -> Path:
    """The prepared directory of the default corpus, preparing it on first use."""
    from hookloop.lm.prepare import prepare_texts

    stdlib = sysconfig.get_paths()["stdlib"]
    key = hashlib.sha256(f"{stdlib}|{sys.version}|{budget}".encode()).hexdigest()[:12]
    directory = cache_dir() / f"stdlib-py{sys.version_info[0]}{sys.version_info[1]}-{key}"
    if (directory / "meta.json").is_file():
        return directory
    log.info("preparing_default_corpus", source=stdlib, budget_bytes=budget, into=str(directory))
    train, val, used = stdlib_texts(budget)
    try:
        prepare_texts(train, val, directory, tokenizer="char", source=[stdlib, *used[:3], "..."])
    except DataError:
        if not (directory / "meta.json").is_file():  # not a concurrent preparer that won
            raise
    return directory


def is_raw_text(path: Path) -> bool:
    """Whether `data.path` names text to prepare rather than a prepared directory: a file,
    or a directory with neither meta.json nor train.bin."""
    if path.is_file():
        return True
    return (
        path.is_dir()
        and not (path / "meta.json").exists()
        and not (path / "train.bin").exists()
        and any(p.is_file() for p in path.iterdir())
    )


def prepared_text(path: Path, *, val_fraction: float = 0.1) -> Path:
    """A raw text file (or directory of them) prepared char-level into the cache, keyed by
    the text's hash: prepared on first use with `hookloop prepare`'s defaults (the last
    `val_fraction` held out), reused while the text is unchanged."""
    from hookloop.lm.prepare import prepare_texts, read_text_sources, split_text

    text, files = read_text_sources(path)
    key = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    directory = cache_dir() / f"text-{path.stem or 'data'}-{key}"
    if (directory / "meta.json").is_file():
        return directory
    log.info(
        "preparing_text",
        source=str(path),
        into=str(directory),
        note="raw text as data.path: prepared once (char tokens, last 10% validation), "
        "reused while it is unchanged",
    )
    train, val = split_text(text, val_fraction)
    try:
        prepare_texts(train, val, directory, tokenizer="char", source=files)
    except DataError:
        if not (directory / "meta.json").is_file():  # not a concurrent preparer that won
            raise
    return directory
