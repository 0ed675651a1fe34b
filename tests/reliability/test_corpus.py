"""The bad-input corpus: every file in cases/ is one mistake a user makes, run through the real CLI
entry point in-process with the tiny model. Each must end in exit code 2 and one line on stderr that
names the file:line or key (the `expect` fragment), with no traceback. Grow it with every bug.

A case file holds:
  argv:     the command line; {dir} is the case's scratch folder, {tiny} the tiny model, {run} a
            finished tiny run (its own copy), {data} a valid training file
  files:    text files to write into {dir} first (name: content)
  binary:   files given as Python bytes literals (invalid UTF-8, damaged binaries)
  before:   command lines that must succeed first (e.g. a run to resume)
  truncate: {path: ..., keep: N}: cut a file to its first N bytes before the command
  expect:   the fragment the error line must contain
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest
import yaml

import forgetless
from forgetless.cli import main
from tests.conftest import ROWS, tiny_args, write_jsonl

PROGRESS = re.compile(r"\d+%\|")  # progress bars (tqdm writes them to stderr) are not messages
CASES = sorted((Path(__file__).parent / "cases").glob("*.yaml"))


@pytest.fixture(scope="session")
def finished_run(tiny_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reliability")
    data = write_jsonl(root / "train.jsonl", ROWS)
    out = root / "run"
    forgetless.train({}, tiny_args(tiny_dir, data, out))
    return out


def _fill(value, names: dict) -> object:
    if isinstance(value, str):  # only the placeholders above: JSON braces in file contents stay
        return re.sub(r"\{(dir|tiny|run|data)\}", lambda m: str(names[m.group(1)]), value)
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    return value


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_bad_input_gets_one_clear_line(case, tmp_path, tiny_dir, finished_run, capsys):
    spec = yaml.safe_load(case.read_text(encoding="utf-8"))
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    data = write_jsonl(tmp_path / "data.jsonl", ROWS)
    names = {"dir": tmp_path, "tiny": tiny_dir, "run": run, "data": data}
    for name, text in (spec.get("files") or {}).items():
        (tmp_path / name).write_text(_fill(text, names), encoding="utf-8")
    for name, literal in (spec.get("binary") or {}).items():
        (tmp_path / name).write_bytes(ast.literal_eval(literal))
    for argv in spec.get("before") or []:
        assert main(_fill(argv, names)) == 0, capsys.readouterr()
    if spec.get("truncate"):
        path = Path(_fill(spec["truncate"]["path"], names))
        path.write_bytes(path.read_bytes()[: spec["truncate"]["keep"]])
    capsys.readouterr()
    code = main(_fill(spec["argv"], names))
    err = capsys.readouterr().err.strip()
    assert code == 2, f"exit {code}; stderr: {err[-2000:]}"
    assert "Traceback" not in err
    lines = [line for line in re.split(r"[\r\n]+", err) if line.strip()]
    errors = [line for line in lines if line.startswith("forgetless: error: ")]
    noise = [line for line in lines if line not in errors and not PROGRESS.search(line)]
    assert len(errors) == 1 and errors[0] == lines[-1] and not noise, err[-2000:]
    assert _fill(spec["expect"], names) in errors[0], errors[0]
