"""The command line: one-line errors, the documented short run on the real model, chat."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import forgetless
from forgetless.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_user_errors_are_one_line_with_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("peft:\n  rank: 8\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"forgetless: error: {bad}:2: unknown key 'peft.rank'; did you mean 'peft.r'?"
    assert main(["train", "train.lr=-1"]) == 2
    assert "train.lr: Input should be greater than 0 (got -1)" in capsys.readouterr().err


def test_help_config_lists_keys(capsys):
    assert main(["train", "--help-config"]) == 0
    assert "train.warmup_ratio = 0.03" in capsys.readouterr().out


def test_chat_answers_with_one_or_two_adapters(tiny_dir, tiny_overrides, tmp_path):
    from forgetless.chat import Chat

    forgetless.train({}, tiny_overrides)
    run = tmp_path / "run"
    chat = Chat(None, [f"a={run}", f"b={run / 'adapter'}"], None, max_new_tokens=4)
    assert chat.names == ["base", "a", "b"] and chat.active == "a"
    assert isinstance(chat.answer("hello"), str)
    chat.use("base")
    assert isinstance(chat.answer("hello"), str)
    with pytest.raises(forgetless.UserError, match="unknown adapter 'c'"):
        chat.use("c")


@pytest.mark.slow
def test_short_quickstart_run_through_the_cli(tmp_path):
    """The documented smoke run: `forgetless train configs/quickstart.yaml train.max_steps=3 output_dir=DIR`."""
    out = tmp_path / "qs"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "forgetless",
            "train",
            str(ROOT / "configs" / "quickstart.yaml"),
            "train.max_steps=3",
            f"output_dir={out}",
            "eval.max_examples=6",
            "eval.samples=1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "held-out task score" in proc.stdout and "sample 1" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["task_before"]["exact_match"] == 0.0
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(summary["model_path"])
    PeftModel.from_pretrained(base, str(out / "adapter"))  # plain PEFT round trip
