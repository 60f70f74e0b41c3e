"""Executable documentation: every page of README.md and docs/ runs as a test.

For each page, its fenced blocks run in document order in one fresh working directory (with
a temporary HOME and cache):

* a `bash`/`console`/`sh`/`shell` block, or a `text` block whose first line starts with
  `$ hookloop`, runs each `hookloop ...` command in it (other commands, such as `pip install`,
  are the reader's set-up and are not run). Commands that train (`train`, `verify-resume`,
  `doctor`) get the `--set` overrides of `hookloop.testing.TINY_RUN` appended, so a run takes
  seconds. Any non-zero exit status, or a traceback, fails the page; a command shown with its
  error output (`$ hookloop ...` followed by `hookloop ...: error: ...`) must fail with it.
* a `text` block right after a command block is that block's last command's output, and each
  of its lines must appear, in order, in what the command printed. Numbers, times, run
  directory names and temporary paths are compared as placeholders (a shortened run prints
  other figures) unless the block is marked `<!-- docs-test: exact -->`; `...` skips lines.
* a `python` block runs (one namespace per page, so a later block may use an earlier one's
  names). A block whose first line is a comment naming a file of the repository
  (`# examples/.../plugin.py`) must match that file: line for line, or, when the comment says
  `(abridged)`, its lines must appear in the file in the same order.
* a `toml` block whose first line is a comment naming a `.toml` file is written to that file,
  so a later command can use it (`hookloop train -c shakespeare.toml`); one naming a file of
  the repository (`# examples/.../pyproject.toml`) must match that file line for line.

Markers, as HTML comments (invisible on the rendered page):

* `<!-- docs-test: skip REASON -->` right before a block: do not run it (or, before an output
  block, do not compare it). A reason is required.
* `<!-- docs-test: skip-page REASON -->` anywhere on a page: skip the whole page.
* `<!-- docs-test: exact -->` right before an output block: compare it exactly.
* `<!-- docs-test: setup` ... `-->`: Python run before the page's next Python block, e.g. to
  give names that the prose says come from elsewhere (`model`, `batches`).
* `<!-- docs-test: run hookloop train -->`: a command run at that point (shortened like the
  others, output unchecked), e.g. to make the run a later command reads.

The working directory starts with `input.txt` (a small text), `train.txt`/`val.txt`, a
`notes/` directory of `.md` files and an empty `run.toml`, standing in for the reader's files.
Run directory names in commands (`runs/20261124-090610`, `runs/x`, `runs/<run>`) become the
newest run, checkpoint names (`step-00000400`) its newest checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hookloop.testing import TINY_RUN

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted(
    [REPO / "README.md", *(REPO / "docs").rglob("*.md")], key=lambda p: str(p.relative_to(REPO))
)
SHELL = {"bash", "console", "sh", "shell"}
TRAINS = {"train", "verify-resume", "doctor"}
SLOW_PAGES = {"docs/guide/tutorial.md"}
SHOW_ALL = ("plugins.eval.every=2", "plugins.console.every=1")
"""With TINY_RUN's four steps: periodic eval and console lines appear, as on a page's long run."""
KEEP_FOR_DOCTOR = ("training.max_steps", "plugins.schedule.warmup_steps")
TREE = re.compile(r"^(?:[│ ]*)(?:├── |└── )(\S+)")
MARKER = re.compile(r"<!--\s*docs-test:\s*(\S+)(.*?)-->", re.S)
FENCE = re.compile(r"^(\s*)(`{3,})(\w*)[^\n]*$")
RUN_NAME = re.compile(r"runs/(\d{8}-\d{6}(?:-\d+)?|x|<run>)")
STEP_NAME = re.compile(r"step-\d{8}")
TEXT = "".join(
    f"def f{i}(x):\n    return x * {i} + {i % 7}  # ROMEO: a line {i}\n\n" for i in range(300)
)


@dataclass
class Block:
    """One fenced block and the marker right before it."""

    lang: str
    text: str
    line: int
    marker: tuple[str, str] | None = None
    setup: list[str] = field(default_factory=list)
    follows: bool = False  # nothing but blank lines and markers since the block before

    @property
    def where(self) -> str:
        return f"line {self.line}"


def parse(page: Path) -> tuple[list[Block], str | None]:
    """The page's fenced blocks, and its skip-page reason (None when it runs)."""
    text = page.read_text(encoding="utf-8")
    skip_page = next((m[2].strip() for m in MARKER.finditer(text) if m[1] == "skip-page"), None)
    lines = text.splitlines()
    blocks: list[Block] = []
    pending: tuple[str, str] | None = None
    setup: list[str] = []
    follows = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("<!--"):
            end = i
            while "-->" not in lines[end]:
                end += 1
            comment = "\n".join(lines[i : end + 1])
            found = MARKER.search(comment)
            if found and found[1] == "setup":
                setup.append(found[2])
            elif found and found[1] == "run":
                blocks.append(Block("run", found[2].strip(), i + 1))
            elif found and found[1] != "skip-page":
                pending = (found[1], found[2].strip())
            i = end + 1
            continue
        fence = FENCE.match(line)
        if fence:
            indent, ticks, lang = fence.groups()
            body, j = [], i + 1
            while j < len(lines) and not lines[j].strip().startswith(ticks):
                body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
                j += 1
            blocks.append(Block(lang, "\n".join(body), i + 1, pending, setup, follows))
            if lang == "python":
                setup = []
            pending, follows, i = None, True, j + 1
            continue
        if line.strip():
            pending, follows = None, False  # a marker applies to the block right after it
        i += 1
    return blocks, skip_page


def commands(block: Block) -> list[tuple[list[str], list[str]]]:
    """The `hookloop` commands of a block, each with the output lines shown after it.

    A command is `hookloop ARGS` (or `.../bin/hookloop`), or `torchrun ... -m hookloop ARGS`
    (`["torchrun", *ARGS]`), at the start of a shell command: of a line, after `;`, `&&`,
    `||` or `|`, or after `do`, `then`, `until`, `while`, `if`, `time` or `srun`. Lines
    continued with a backslash are joined first."""
    found: list[tuple[list[str], list[str]]] = []
    prompt = block.lang == "text" or any(ln.startswith("$ ") for ln in block.text.splitlines())
    for line in block.text.replace("\\\n", " ").splitlines():
        stripped = line.strip()
        if prompt and not stripped.startswith("$ "):
            if found:
                found[-1][1].append(line)
            continue
        stripped = stripped.removeprefix("$ ")
        found += [(words, []) for words in _shell_commands(stripped)]
    return found


LEADS = {"do", "then", "until", "while", "if", "time", "srun", "!"}
SEPARATORS = {";", "&&", "||", "|", "&", ";;"}


def _shell_commands(line: str) -> list[list[str]]:
    """The hookloop (and torchrun ... -m hookloop) commands in one line of shell."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split, lexer.commenters = True, "#"
    segment: list[str] = []
    found: list[list[str]] = []
    for token in [*lexer, ";"]:
        if token not in SEPARATORS:
            segment.append(token)
            continue
        while segment and segment[0] in LEADS:
            segment = segment[1:]
        if segment and (segment[0] == "hookloop" or segment[0].endswith("/bin/hookloop")):
            found.append(segment[1:])
        elif segment and segment[0] == "torchrun" and "hookloop" in segment:
            at = segment.index("hookloop")
            assert segment[at - 1] == "-m", f"torchrun without -m hookloop: {line}"
            found.append(["torchrun", *segment[at + 1 :]])
        segment = []
    return found


def normalise(line: str, tmp: Path, *, exact: bool) -> str:
    """A line with what legitimately differs between runs replaced by placeholders."""
    line = line.replace(str(tmp) + "/", "").replace(str(tmp), ".")
    line = re.sub(r"\S*/\.cache/hookloop/", "CACHE/", line)
    line = re.sub(r"~/\.cache/hookloop/", "CACHE/", line)
    line = re.sub(r"\S*/home\d*/cache/", "CACHE/", line)  # the docs test's HOOKLOOP_CACHE
    line = RUN_NAME.sub("runs/RUN", line)
    line = re.sub(r"\d\d:\d\d:\d\d", "TIME", line)
    line = re.sub(
        r"python3? -m hookloop|\S+/bin/hookloop|\S*python\S* -m hookloop", "hookloop", line
    )
    if not exact:
        line = re.sub(r"step-\d{8}", "step-N", line)
        line = re.sub(r"-?\d[\d,]*(\.\d+)?(e-?\d+)?", "N", line)
        line = re.sub(r"(CACHE/[\w-]+?)-[0-9a-f]{12}", r"\1-HASH", line)
    return " ".join(line.split())


def check_output(shown: list[str], printed: str, tmp: Path, *, exact: bool, where: str) -> None:
    """Each shown line appears, in order, among the printed ones (`...` skips any lines)."""
    actual = [normalise(ln, tmp, exact=exact) for ln in printed.splitlines()]
    position = 0
    for want in shown:
        if not want.strip() or want.strip() in ("...", "…"):
            continue
        target = normalise(want, tmp, exact=exact)
        for k in range(position, len(actual)):
            if actual[k] == target or (" " in target and _same_log_line(actual[k], target)):
                position = k + 1
                break
        else:
            raise AssertionError(
                f"{where}: the page shows\n  {want}\nbut the command printed (from line "
                f"{position + 1}):\n" + "\n".join("  " + a for a in actual[position:][:40])
            )


def _same_log_line(actual: str, shown: str) -> bool:
    """Log lines: the same level and event and the same keys (values differ run to run)."""

    def shape(line: str) -> tuple[str, ...] | None:
        m = re.match(r"TIME \[(\w+) *\] (\w+)(.*)", line)
        return m and (m[1], m[2], *sorted(re.findall(r"(\w+)=", m[3])))

    return shape(actual) is not None and shape(actual) == shape(shown)


class Page:
    """Runs one page's blocks in order in `cwd`; `run_hookloop` runs a command (the
    `forked_hookloop` fixture: a `python -m hookloop` process without the start-up)."""

    def __init__(
        self, page: Path, cwd: Path, env: dict[str, str], run_hookloop: Callable[..., Any]
    ) -> None:
        self.page, self.cwd, self.env, self.run_hookloop = page, cwd, env, run_hookloop
        self.namespace: dict[str, object] = {"__name__": "__docs__"}
        self.last: tuple[list[str], str, int] | None = None  # (command, output, status)
        self.name = str(page.relative_to(REPO))

    def run(self, blocks: list[Block]) -> None:
        for block in blocks:
            where = f"{self.name} {block.where}"
            skipped = block.marker and block.marker[0] == "skip"
            output = block.follows and self.last is not None and not _is_prompt(block)
            if block.lang == "text" and output:
                if not skipped:
                    exact = bool(block.marker and block.marker[0] == "exact")
                    check_output(
                        block.text.splitlines(), self.last[1], self.cwd, exact=exact, where=where
                    )
                self.last = None
                continue
            self.last = None
            if skipped:
                continue
            if block.lang == "text" and RUN_NAME.match(block.text):
                self.tree(block.text, where)
            if block.lang == "run":  # a hidden set-up command, its output unchecked
                for words, _ in commands(Block("bash", block.text, block.line)):
                    self.command(words, [], block, where)
                continue
            if block.lang in SHELL or _is_prompt(block):
                for words, shown in commands(block):
                    self.command(words, shown, block, where)
            elif block.lang == "python":
                self.python(block, where)
            elif block.lang == "toml":
                self.toml(block, where)

    def command(self, words: list[str], shown: list[str], block: Block, where: str) -> None:
        launcher = words[:1] if words[:1] == ["torchrun"] else []
        words = [self.substitute(w) for w in words[len(launcher) :]]
        argv = [sys.executable, "-m", "hookloop", *words]
        sub = next((w for w in words if not w.startswith("-")), "")
        if sub in TRAINS and "--help" not in words:
            shorten = [*TINY_RUN, *SHOW_ALL]
            if sub == "doctor":  # trains nothing itself: keep the run's length and schedule
                shorten = [o for o in shorten if not o.startswith(KEEP_FOR_DOCTOR)]
            argv += [arg for item in shorten for arg in ("--set", item)]
        if launcher:
            result = torchrun(argv[3:], cwd=self.cwd, env=self.env)
        else:
            result = self.run_hookloop(
                argv[3:], cwd=self.cwd, env=self.env, timeout=300, merge=True
            )
        output = result.stdout
        shows_error = any(": error: " in ln for ln in shown)
        title = f"{where}: `{' '.join([*launcher, 'hookloop'])} {shlex.join(words)}`"
        assert "Traceback (most recent call last)" not in output, f"{title}:\n{output}"
        if shows_error:
            assert result.returncode != 0, f"{title} should fail as shown:\n{output}"
        else:
            assert result.returncode == 0, f"{title} exit {result.returncode}:\n{output}"
        if shown:
            exact = bool(block.marker and block.marker[0] == "exact")
            check_output(shown, output, self.cwd, exact=exact, where=where)
        self.last = (words, output, result.returncode)

    def tree(self, text: str, where: str) -> None:
        """A run directory's tree: each entry shown exists in the newest run (any step-N
        checkpoint stands for a documented one)."""
        runs = sorted((self.cwd / "runs").glob("*/config.toml"), key=lambda p: p.stat().st_mtime)
        assert runs, f"{where}: a run directory tree, but no run was made before it"
        run, stack = runs[-1].parent, []
        for line in text.splitlines()[1:]:
            m = TREE.match(line)
            if not m:
                continue
            depth = line.index(m[1]) // 4 - 1
            name = m[1].rstrip("/")
            stack[depth:] = [name]
            parent = run.joinpath(*stack[:-1])
            if STEP_NAME.fullmatch(name):
                assert list(parent.glob("step-*")), f"{where}: no checkpoint in {parent}"
                stack[-1] = next(iter(sorted(parent.glob("step-*")))).name
            else:
                assert (parent / name).exists(), f"{where}: the run has no {name} in {parent}"

    def substitute(self, word: str) -> str:
        """Documented run and checkpoint names become this page's newest ones."""
        runs = sorted((self.cwd / "runs").glob("*/config.toml"), key=lambda p: p.stat().st_mtime)
        if runs and RUN_NAME.search(word):
            word = RUN_NAME.sub(f"runs/{runs[-1].parent.name}", word)
        if runs and STEP_NAME.search(word):
            steps = sorted((runs[-1].parent / "checkpoints").glob("step-*"))
            word = STEP_NAME.sub(steps[-1].name, word) if steps else word
        return word

    def python(self, block: Block, where: str) -> None:
        first = block.text.splitlines()[0] if block.text else ""
        named = re.match(r"#\s*(\S+\.py)\b(.*)", first)
        if named and (REPO / named[1]).is_file():
            _matches_file(block.text, REPO / named[1], abridged="abridged" in named[2], where=where)
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(self.cwd)
            for key in ("HOME", "HOOKLOOP_CACHE"):
                mp.setenv(key, self.env[key])
            for code in [*block.setup, block.text]:
                try:
                    exec(compile(code, f"{self.name}:{block.line}", "exec"), self.namespace)
                except Exception:
                    raise AssertionError(
                        f"{where}: python block failed\n{traceback.format_exc()}"
                    ) from None

    def toml(self, block: Block, where: str) -> None:
        named = re.match(r"#\s*(\S+\.toml)\s*$", block.text.splitlines()[0] if block.text else "")
        if named and "/" in named[1] and (REPO / named[1]).is_file():  # a file of the repo
            _matches_file(block.text, REPO / named[1], abridged=False, where=where)
        elif named:
            (self.cwd / named[1]).write_text(block.text + "\n", encoding="utf-8")


def torchrun(args: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`hookloop ARGS` under torchrun as the page shows it, made to fit a CPU host: 2 ranks,
    one machine, gloo (the page's own torchrun options name GPUs, nodes and a rendezvous).
    The whole process group is killed if it outlives the timeout."""
    import signal

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    environ = {**env, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*cmd, "2", "-m", "hookloop", *args], cwd=cwd, env=environ, text=True,
        start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(
            f"torchrun hookloop {shlex.join(args)} hung past 180 s:\n{out}"
        ) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def _is_prompt(block: Block) -> bool:
    return block.lang == "text" and block.text.lstrip().startswith("$ hookloop")


def _matches_file(shown: str, path: Path, *, abridged: bool, where: str) -> None:
    body = [ln for ln in shown.splitlines()[1:]]
    real = path.read_text(encoding="utf-8").splitlines()
    if not abridged:
        assert [ln.rstrip() for ln in body] == [ln.rstrip() for ln in real], (
            f"{where}: the block differs from {path.relative_to(REPO)}"
        )
        return

    def code(line: str) -> str:  # an abridged excerpt may comment a line differently
        return line.split("  #")[0].rstrip()

    real = [code(ln) for ln in real]
    position = 0
    for line in (ln for ln in body if ln.strip() and ln.strip() != "..."):
        try:
            position = real.index(code(line), position) + 1
        except ValueError:
            raise AssertionError(
                f"{where}: {line.strip()!r} is not in {path.relative_to(REPO)} (in this order)"
            ) from None


def fixture_files(cwd: Path) -> None:
    """The reader's own files that pages refer to."""
    (cwd / "input.txt").write_text(TEXT, encoding="utf-8")
    (cwd / "train.txt").write_text(TEXT[: len(TEXT) * 9 // 10], encoding="utf-8")
    (cwd / "val.txt").write_text(TEXT[len(TEXT) * 9 // 10 :], encoding="utf-8")
    (cwd / "notes").mkdir()
    for i in range(3):
        (cwd / "notes" / f"n{i}.md").write_text(TEXT[i * 2000 : (i + 1) * 2000], encoding="utf-8")
    (cwd / "run.toml").write_text("# an empty config: the defaults\n", encoding="utf-8")
    halves = (TEXT[: len(TEXT) // 2], TEXT[len(TEXT) // 2 :])
    # stories/more: the prepare --help examples; speeches/royals: the tutorial's corpora
    # (its shell snippet makes speeches.jsonl from input.txt; the runner runs only hookloop)
    for name, part in (
        ("stories.jsonl", halves[0]),
        ("more.jsonl", halves[1]),
        ("speeches.jsonl", halves[0]),
        ("royals.jsonl", halves[1]),
    ):
        lines = [json.dumps({"text": chunk}) for chunk in part.split("\n\n") if chunk.strip()]
        (cwd / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def docs_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One HOME (and so one prepared default corpus) for every page."""
    return tmp_path_factory.mktemp("home")


def _page_param(page: Path) -> object:
    name = str(page.relative_to(REPO))
    marks = [pytest.mark.slow] if name in SLOW_PAGES else []
    return pytest.param(page, id=name, marks=marks)


@pytest.mark.parametrize("page", [_page_param(p) for p in PAGES])
def test_page_runs_as_written(
    page: Path, tmp_path: Path, docs_home: Path, forked_hookloop: Callable[..., Any]
) -> None:
    blocks, skip_page = parse(page)
    if skip_page is not None:
        pytest.skip(skip_page or "skip-page without a reason (test_markers_are_understood fails)")
    env = {
        **os.environ,
        "HOME": str(docs_home),
        "HOOKLOOP_CACHE": str(docs_home / "cache"),
        "COLUMNS": "200",
    }
    env.pop("HOOKLOOP_DEBUG", None)
    fixture_files(tmp_path)
    Page(page, tmp_path, env, forked_hookloop).run(blocks)


def test_markers_are_understood() -> None:
    """A misspelt marker would silently run (or skip) the wrong thing."""
    known = {"skip", "skip-page", "exact", "setup", "run"}
    for page in PAGES:
        for m in MARKER.finditer(page.read_text(encoding="utf-8")):
            where = f"{page.relative_to(REPO)}: docs-test marker {m[1]!r}"
            assert m[1] in known, f"{where} is unknown; use one of {sorted(known)}"
            assert m[1] not in ("skip", "skip-page") or m[2].strip(), f"{where} needs a reason"


def test_the_docs_build_command_prints_no_banner() -> None:
    """`mkdocs build` as README gives it, without any environment variable, stays quiet:
    the theme is pinned below the release that prints an end-of-life notice on every build."""
    env = {k: v for k, v in os.environ.items() if "MKDOCS" not in k}
    code = "import sys; sys.argv[0] = 'mkdocs'; import material.templates"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


HELP_ORDER = ("prepare", "train", "sample", "eval", "plot", "schedule", "doctor", "verify-resume")


@pytest.mark.slow
def test_every_help_example_runs(
    tmp_path: Path, docs_home: Path, forked_hookloop: Callable[..., Any]
) -> None:
    """The `Examples:` of each command's --help, in the order a user meets them (prepare,
    train, sample, ...), shortened like the pages' commands."""
    import ast

    from hookloop.cli import COMMANDS

    blocks = []
    for name in HELP_ORDER:
        module = COMMANDS[name][0].replace("hookloop.commands.", "")
        source = (REPO / "engine" / "commands" / f"{module}.py").read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(source)) or ""
        examples = doc.split("Examples:")[1].split("\n\n")[0] if "Examples:" in doc else ""
        blocks.append(Block("bash", examples, 0))
    env = {**os.environ, "HOME": str(docs_home), "HOOKLOOP_CACHE": str(docs_home / "cache")}
    fixture_files(tmp_path)
    Page(REPO / "engine" / "commands" / "__init__.py", tmp_path, env, forked_hookloop).run(blocks)
