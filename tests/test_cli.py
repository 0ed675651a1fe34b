"""The command line: parsing in any order, one-line errors, --launch, the documented short run on the
real model, chat, compare, shipped recipes by name."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import forgetless
from forgetless import api
from forgetless.cli import main, parse
from forgetless.commands import training as train_command
from forgetless.training import distributed

pytestmark = pytest.mark.seconds(150)  # the longest files start first (tests/conftest.py)

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
    from forgetless.deploy.chat import Chat

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
    """The documented smoke run: `forgetless train quickstart train.max_steps=3 output_dir=DIR`."""
    out = tmp_path / "qs"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "forgetless",
            "train",
            "quickstart",
            "train.max_steps=3",
            f"output_dir={out}",
            "eval.max_examples=6",
            "eval.samples=1",
            "eval.retention_max_prompts=6",
            "eval.probe_prompts=4",
            "eval.max_perplexity_rows=12",  # of the 60 validation rows
            "eval.max_questions=12",  # of the 60 bundled questions
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "task metric" in proc.stdout and "sample 1" in proc.stdout
    assert "KL to base per token (6 held-out prompts)" in proc.stdout and "mc.jsonl acc (12 questions)" in proc.stdout
    assert "KL(base ‖ tuned) per token (12 task prompts)" in proc.stdout
    # the default preset is `full`: self-rehearsal from the shipped base-model answers plus LwF
    assert "rehearsal: 300 base-model answers (cached" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["forgetting_preset"] == "full" and {"ce", "lwf"} <= set(summary["final"])
    assert "ce_rehearsal" not in summary["final"]  # rehearsal rows carry the KL only (docs/forgetting.md)
    assert summary["steps"] == 3 and summary["task_before"]["exact_match"] == 0.0
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(summary["model_path"])
    PeftModel.from_pretrained(base, str(out / "adapter"))  # plain PEFT round trip


def test_compare_tabulates_variants_and_reuses_finished_runs(tiny_overrides, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"instruction": "Say hi."}\n{"instruction": "Say bye."}\n')
    args = [
        "compare",
        *tiny_overrides,
        "train.max_steps=2",
        f"output_dir={tmp_path / 'cmp'}",
        "eval.before_after=true",
        "eval.max_new_tokens=4",
        "eval.retention=true",
        f"eval.retention_prompts={prompts}",
        "eval.retention_max_new_tokens=4",
        "--variants",
        "none,lwf",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert table.splitlines()[0].startswith("| variant | exact_match before → after")
    assert "| none |" in table and "| lwf |" in table and table.strip() in out
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [r["variant"] for r in rows] == ["none", "lwf"] and all(r["retention_prompts"] == 2 for r in rows)
    assert main(args) == 0
    assert "reusing the finished run of 'lwf'" in capsys.readouterr().out
    # A setting the variant does not use keeps it reusable; one it uses retrains it.
    assert (
        main([*args[:-2], "forgetting.rehearsal.weight=0.5", "forgetting.lwf.weight=0.9", "--overwrite", *args[-2:]])
        == 0
    )
    out = capsys.readouterr().out
    assert "reusing the finished run of 'none'" in out and "training variant 'lwf'" in out
    assert main([*args[:-1], "none,fulll"]) == 2
    assert "unknown variant 'fulll'" in capsys.readouterr().err


def test_rehearsal_generate_writes_both_files(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"instruction": "Say hi."}\n{"prompt": "Say bye."}\n')
    out = tmp_path / "out"
    args = [f"model.name={tiny_dir}", f"forgetting.rehearsal.prompts={prompts}", f"eval.retention_prompts={prompts}"]
    assert main(["rehearsal", "generate", *args, "forgetting.rehearsal.max_new_tokens=3", "--out", str(out)]) == 0
    names = sorted(p.name.split("-")[0] for p in out.glob("*.jsonl"))
    assert names == ["rehearsal", "retention"]
    assert all(json.loads(p.read_text())["rows"] == 2 for p in out.glob("*.meta.json"))


@pytest.mark.parametrize(
    "argv, items, flags",
    [
        (["train", "my.yaml", "--resume", "train.max_steps=2"], ["my.yaml", "train.max_steps=2"], {"resume": True}),
        (["train", "my.yaml", "--launch", "2", "train.max_steps=2"], ["my.yaml", "train.max_steps=2"], {"launch": 2}),
        (["train", "--overwrite", "my.yaml", "a=1", "--auto", "b=2"], ["my.yaml", "a=1", "b=2"], {"auto": True}),
        (["eval", "cfg.yaml", "--run", "r", "eval.max_examples=2"], ["cfg.yaml", "eval.max_examples=2"], {"run": "r"}),
        (["compare", "q", "--variants", "none", "x=1"], ["q", "x=1"], {"variants": "none"}),
        (["train", "q", "--debug", "x=1"], ["q", "x=1"], {"debug": True}),
    ],
)
def test_options_and_overrides_mix_in_any_order(argv, items, flags):
    """Defect: overrides after a flag failed with "unrecognized arguments"."""
    args = parse(argv)
    assert args.items == items
    assert all(getattr(args, k) == v for k, v in flags.items())


def test_report_runs_and_unknown_options_after_positionals():
    assert parse(["report", "a", "--out", "x", "b"]).runs == ["a", "b"]
    with pytest.raises(SystemExit):
        parse(["train", "q", "x=1", "--no-such-flag"])


def test_launch_hands_every_other_flag_to_the_processes(monkeypatch):
    """Defect: `--launch N --auto` (and --debug) were silently dropped from the launched command."""
    seen = []
    monkeypatch.setattr(train_command.subprocess, "call", lambda cmd: seen.append(cmd) or 0)
    argv = ["--debug", "train", "my.yaml", "--launch", "2", "--auto", "train.max_steps=2", "--resume"]
    assert train_command.train(parse(argv)) == 0
    tail = seen[0][seen[0].index("forgetless") + 1 :]
    assert tail == ["--debug", "train", "my.yaml", "--auto", "train.max_steps=2", "--resume"]
    assert distributed.without_launch(["train", "--launch=2", "q"]) == ["train", "q"]


def test_help_answers_without_loading_torch():
    """`forgetless --help` parses only: torch and transformers load after parsing."""
    code = "import sys; from forgetless.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
    code += "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip().endswith("False")


def test_shipped_recipes_load_by_name_from_any_directory(tmp_path, monkeypatch):
    """The recipes are package data: an installed wheel has them (the CI wheel step runs one)."""
    monkeypatch.chdir(tmp_path)
    assert {"quickstart", "dpo", "reward", "rlhf", "grpo"} <= set(api.shipped_configs())
    assert api.load_config("dpo").recipe == "dpo" and api.load_config().output_dir == "runs/quickstart"
    assert main(["train", "no-such-recipe"]) == 2
