"""The README cannot drift from the code: its blocks marked ``<!-- runnable -->`` run as written (in a scratch
folder that sees the repository's Resources/), and every ``imis-segment`` and ``python -m training...`` command
in the shell blocks of README.md, training/README.md and docs/ parses its arguments with the real parsers."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path

import pytest

from helpers import REPO

DOCS = [REPO / "README.md", REPO / "training" / "README.md", REPO / "training" / "splits" / "README.md",
        REPO / "IMISSegment" / "README.md", *sorted((REPO / "docs").glob("*.md")),
        *sorted((REPO / "docs").glob("*/*.md")), *sorted((REPO / "docs" / "evaluation").glob("*/README.md"))]
DOCS = [path for path in DOCS if "history" not in path.parts]   # the history keeps commands as they were run
FENCE = re.compile(r"(<!-- runnable -->\n)?```(\w*)\n(.*?)```", re.S)


def blocks(path: Path):
    """(runnable, language, text) of each fenced block of ``path``."""
    return [(bool(m.group(1)), m.group(2), m.group(3)) for m in FENCE.finditer(path.read_text(encoding="utf-8"))]


def commands(text: str):
    """The commands of a shell block: continuation lines joined, comments dropped, split at && and ;, leading
    VAR=value assignments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)   # a shell block that does not split is an error in the docs
        command = []
        for word in words + [";"]:
            if word in ("&&", ";", "||"):
                while command and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", command[0]):
                    command.pop(0)
                if command:
                    out.append(command)
                command = []
            else:
                command.append(word)
    return out


def shell_commands():
    found = []
    for path in DOCS:
        for _, language, text in blocks(path):
            if language in ("bash", "sh", "shell"):
                found += [(path.relative_to(REPO).as_posix(), command) for command in commands(text)]
    return found


class _Parsed(Exception):
    pass


@contextlib.contextmanager
def parse_only():
    """Within: ArgumentParser.parse_args parses (errors exit 2 as usual), then stops the command before it runs."""
    original = argparse.ArgumentParser.parse_args

    def parse(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))
    argparse.ArgumentParser.parse_args = parse
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original


def _imis_commands():
    return [(where, c) for where, c in shell_commands() if Path(c[0]).name == "imis-segment"]


def _training_commands():
    found = []
    for where, c in shell_commands():
        if "-m" in c and c[c.index("-m") + 1].startswith("training."):
            at = c.index("-m")
            found.append((where, c[at + 1], c[at + 2:]))
    return found


def test_the_docs_name_commands_to_check():
    """The extraction finds what the README shows (a guard against a parser that silently checks nothing)."""
    imis = {c[1] for _, c in _imis_commands()}
    assert {"demo", "segment", "evaluate", "bench"} <= imis
    assert {"training.loops.click_net", "training.export.click_net"} <= {m for _, m, _ in _training_commands()}


@pytest.mark.parametrize("where,command", _imis_commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_imis_segment_commands_in_the_docs_parse(where, command):
    from IMISSegmentLib.cli import build_parser
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            build_parser().parse_args(command[1:])
        except SystemExit as error:
            pytest.fail(f"{where}: {' '.join(command)!r} does not parse (exit {error.code}): {stderr.getvalue()}")


@pytest.mark.parametrize("where,module,argv", _training_commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_training_commands_in_the_docs_parse(where, module, argv):
    pytest.importorskip("torch")
    main = importlib.import_module(module).main
    stderr = io.StringIO()
    with parse_only(), contextlib.redirect_stderr(stderr):
        try:
            main(argv)
        except _Parsed:
            return
        except SystemExit as error:
            pytest.fail(f"{where}: python -m {module} {' '.join(argv)!r} does not parse (exit {error.code}): "
                        f"{stderr.getvalue()}")
    pytest.fail(f"{where}: python -m {module} returned without parsing its arguments")


def test_files_the_docs_run_exist():
    """Scripts named in the shell blocks (bash recipes, the batch script) are in the repository."""
    missing = []
    for where, command in shell_commands():
        for word in command:
            if re.fullmatch(r"(training|IMISSegment)/[\w/.-]+\.(sh|py)", word) and not (REPO / word).is_file():
                missing.append(f"{where}: {word}")
    assert not missing


def _runnable(language):
    return [text for path in [REPO / "README.md"] for runnable, lang, text in blocks(path) if runnable and lang == language]


def _scratch(tmp_path, monkeypatch, clone_root: bool = False):
    """A scratch folder as the working directory; ``clone_root``: one that sees the clone's Resources/ (the
    README's shell commands say they run from the clone's root)."""
    if clone_root:
        (tmp_path / "Resources").symlink_to(REPO / "Resources")
    monkeypatch.chdir(tmp_path)


def test_readme_marks_its_examples_runnable():
    assert _runnable("python") and _runnable("bash")


@pytest.mark.parametrize("code", _runnable("python"), ids=lambda c: c.splitlines()[0][:40])
def test_readme_python_blocks_run(code, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    _scratch(tmp_path, monkeypatch)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    written = re.findall(r'write_\w+\("([^"]+)"', code)
    assert written, "the README's Python example writes its result"
    for name in written:
        assert (tmp_path / name).is_file(), f"the README example did not write {name}"


@pytest.mark.parametrize("text", _runnable("bash"), ids=lambda t: t.split("#")[0].strip()[:40])
def test_readme_bash_blocks_run(text, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from IMISSegmentLib.cli import main
    _scratch(tmp_path, monkeypatch, clone_root=True)
    for command in commands(text):
        assert command[0] == "imis-segment", f"a runnable block runs imis-segment commands only: {command}"
        assert main(command[1:]) == 0, " ".join(command)
        for word in command:
            if word.endswith((".seg.nrrd", ".nii.gz")) and not word.startswith("Resources"):
                assert (tmp_path / word).is_file(), f"{' '.join(command)} did not write {word}"
