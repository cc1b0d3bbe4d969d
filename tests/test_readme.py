"""The README's examples run as written (against a small run trained here instead of a 5-minute one)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from dlm.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(language: str, section: str | None = None) -> list[str]:
    """The README's code blocks in `language`, all of them or those under the `## section` heading."""
    text = README.read_text()
    if section is not None:
        text = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with runs/shakespeare: the README's `dlm train` line, shortened to a few steps
    on the bundled corpus (the flags after the README's are ours)."""
    root = tmp_path_factory.mktemp("readme")
    train = next(line for line in blocks("bash")[1].splitlines() if line.startswith("dlm train"))
    argv = shlex.split(train)[1:]
    argv = [a for a in argv if a not in ("--minutes", "5")]  # the budget is the one change
    argv += ["--steps", "3", "--batch-size", "4", "--eval-chunks", "2", "--final-eval-chunks",
             "2", "--no-compile", "--no-progress", "--out", str(root / "runs" / "shakespeare")]
    assert main(argv) == 0
    return root


def shortened(command: str) -> list[str]:
    """The command's arguments; a `dlm train` is cut from 5 minutes to a few steps of the tiny preset, a
    `dlm distill` to a few steps (our flags)."""
    argv = shlex.split(command)[1:]
    if argv[0] == "distill":
        argv += ["--steps", "3", "--batch-size", "2", "--eval-chunks", "2", "--final-eval-chunks", "2", "--no-compile"]
    if argv[0] == "train":
        argv = [a for a in argv if a not in ("--minutes", "5")]
        argv += ["--steps", "2", "--batch-size", "4", "--preset", "tiny", "--eval-chunks", "2", "--final-eval-chunks", "2",
                 "--no-compile", "--no-progress"]
    return argv


def test_cli_examples_run_as_written(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    text = blocks("bash")[1].replace("\\\n", " ")
    commands = [line for line in text.splitlines() if line.startswith("dlm ") and not line.startswith("dlm train")]
    assert len(commands) >= 5
    for command in commands:
        assert main(shlex.split(command)[1:]) == 0, command


def test_python_example_runs_as_written(workdir):
    code = blocks("python", section="Python")[0]
    out = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "forward passes" in out.stdout


def test_readme_names_the_two_setup_commands():
    text = README.read_text()
    assert "make run" in text and "make test" in text


def test_process_examples_run_as_written(workdir, monkeypatch):
    """The "Processes" examples: each `dlm train` shortened to a few steps, the rest as written."""
    monkeypatch.chdir(workdir)
    text = blocks("bash")[2].replace("\\\n", " ")
    commands = [line.split("#")[0] for line in text.splitlines() if line.startswith("dlm ")]
    assert sum(c.startswith("dlm train") for c in commands) >= 2 and len(commands) >= 4
    for command in commands:
        assert main(shortened(command)) == 0, command


def test_sampling_examples_run_as_written(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    commands = [line for line in blocks("bash")[3].splitlines() if line.startswith("dlm ")]
    assert len(commands) >= 5
    for command in commands:
        assert main(shlex.split(command)[1:]) == 0, command


def test_adaptation_and_distillation_examples_run_as_written(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    text = blocks("bash")[4].replace("\\\n", " ")
    commands = [line for line in text.splitlines() if line.startswith("dlm ")]
    assert [c.split()[1] for c in commands] == ["train", "train", "generate", "generate", "train", "distill", "generate"]
    for command in commands:
        assert main(shortened(command)) == 0, command


def test_conditional_examples_run_as_written(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    commands = [line for line in blocks("bash")[5].splitlines() if line.startswith("dlm ")]
    assert len(commands) == 2
    for command in commands:
        assert main(shortened(command)) == 0, command
