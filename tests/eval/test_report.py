"""The end-of-run evaluation, `forgetless eval`, early stopping in a real run, and the report files."""

from __future__ import annotations

import base64
import json
import math
import re

import pytest

import forgetless
from forgetless.cli import main
from tests.conftest import write_jsonl

PNG = b"\x89PNG\r\n\x1a\n"


def _eval_overrides(tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"instruction": f"Say {w}."} for w in ("yes", "no", "hi")])
    mc = write_jsonl(
        tmp_path / "mc.jsonl",
        [
            {"question": "Pick one.", "choices": ["yes", "no"], "answer": 0},
            {"question": "Pick two.", "choices": ["a", "b", "c"], "answer": "C"},
        ],
    )
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "General text about the weather and rivers."}])
    return [
        "eval.before_after=true",
        "eval.max_new_tokens=4",
        "eval.retention=true",
        f"eval.retention_prompts={prompts}",
        "eval.retention_max_new_tokens=4",
        f"eval.benchmarks={mc}",
        f"eval.general_text={text}",
        "eval.probe_prompts=2",
    ]


def test_train_report_and_separate_eval_agree(tiny_overrides, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    overrides = [*tiny_overrides, *_eval_overrides(tmp_path)]
    forgetless.train({}, overrides)
    run = tmp_path / "run"
    ev = json.loads((run / "eval.json").read_text())
    assert {"exact_match", "rouge1", "rouge_l", "bleu", "chrf", "perplexity"} <= set(ev["task"])
    acc = ev["retention"]["benchmarks"]["mc.jsonl"]["acc"]
    assert {"base", "base_ci", "finetuned", "finetuned_ci", "diff", "diff_ci"} <= set(acc)
    assert ev["retention"]["prompts"]["kl_per_token"] > 0
    assert "text.jsonl" in ev["retention"]["general_text"]
    probes = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "retention_kl" in x]
    assert probes and all(p["retention_kl"] >= 0 for p in probes)
    # the last step's validation is read from the final evaluation, not computed a second time
    steps = [p["step"] for p in probes]  # every 3 steps and at each epoch's end
    assert steps == sorted(set(steps)) and steps[-1] == 6  # one line for the last step
    assert probes[-1]["val_loss"] == pytest.approx(math.log(ev["task"]["perplexity"]["finetuned"]), rel=1e-6)
    assert probes[-1]["retention_kl"] == ev["retention"]["prompts"]["probe_kl"]
    # the report: markdown with linked plots, HTML with the same PNGs embedded
    md, page = (run / "report.md").read_text(), (run / "report.html").read_text()
    assert "KL to base per token" in md and "plots/loss.png" in md and "retention_probe.png" in md
    # the training data as `forgetless data check` saw it, in the report and in data_check.json
    found = json.loads((run / "data_check.json").read_text())
    assert "### training data" in md and f"| rows (valid / read) | {found['valid']} / {found['rows']} |" in md
    assert "<h3>training data</h3>" in page
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(images) >= 2 and all(base64.b64decode(i).startswith(PNG) for i in images)
    assert "http" not in page.replace("http-equiv", "")  # nothing to fetch: renders offline
    assert (run / "plots" / "loss.png").read_bytes().startswith(PNG)
    # `forgetless eval --run` repeats the numbers, the base side read from the run's cache entry
    capsys.readouterr()
    assert main(["eval", "--run", str(run)]) == 0
    assert "base model scores: reused" in capsys.readouterr().out
    again = json.loads((run / "eval" / "eval.json").read_text())
    assert again["task"] == ev["task"] and again["retention"] == ev["retention"]


def test_early_stopping_keeps_the_best_adapter(tiny_overrides, tmp_path):
    summary = forgetless.train(
        {},
        [
            *tiny_overrides,
            "train.lr=0.3",  # far too high: the validation loss climbs while the training loss falls
            "train.max_steps=40",
            "train.eval_every=1",
            "train.save_every=100",
            "train.early_stopping.enabled=true",
            "train.early_stopping.patience=1",
        ],
    )
    run = tmp_path / "run"
    assert (run / "best" / "adapter_model.safetensors").is_file()
    print(summary["stopped_early"], summary["steps"], summary["best_step"])
    assert summary["stopped_early"] == "overfitting"
    assert summary["steps"] < 40 and summary["best_step"] < summary["steps"]


def test_with_early_stopping_the_loop_validates_the_last_step_itself(tiny_overrides, tmp_path, monkeypatch):
    """Overfitting seen at the last step must still stop the run and restore the best adapter, which
    only the loop can do: the last validation is not taken from the final evaluation then."""
    from forgetless.recipes import sft

    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))

    def taken_from_the_evaluation(*args):
        raise AssertionError("the last validation came from the final evaluation")

    monkeypatch.setattr(sft, "final_validation", taken_from_the_evaluation)
    overrides = [*tiny_overrides, *_eval_overrides(tmp_path), "train.early_stopping.enabled=true"]
    forgetless.train({}, [*overrides, "train.early_stopping.patience=100"])
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "val_loss" in x][-1] == 6


def test_report_for_several_runs_plots_the_tradeoff(tiny_overrides, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    for name in ("a", "b"):
        forgetless.train(
            {},
            [
                *tiny_overrides,
                *_eval_overrides(tmp_path),
                f"output_dir={tmp_path / name}",
                "train.max_steps=2",
                f"train.seed={len(name) + (name == 'b')}",
            ],
        )
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "both")]) == 0
    page = (tmp_path / "both" / "report.html").read_text()
    assert "task score versus retention" in page and (tmp_path / "both" / "plots" / "tradeoff.png").is_file()
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no summary.json or eval.json" in capsys.readouterr().err
