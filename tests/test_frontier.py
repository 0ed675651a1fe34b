"""benchmarks/frontier.py end to end on the tiny model: forgetless presets, TRL's SFT and SDFT trainers
each train a LoRA on the same rows, and one forgetless evaluation scores them all; the table and the
chart come out of one command. (The real numbers: docs/forgetting.md, from the embedded model.)"""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from tests.conftest import load_benchmark


def _frontier():
    return load_benchmark("frontier")


def test_every_method_trains_and_is_scored_the_same_way(tiny_dir, tmp_path):
    pytest.importorskip("trl")
    frontier = _frontier()
    out = tmp_path / "frontier"
    tiny = ["train.batch_size=2", "train.grad_accum=1", "peft.r=4", "eval.max_new_tokens=4", "eval.benchmarks=[]"]
    tiny += ["eval.retention_max_prompts=4", "eval.retention_max_new_tokens=4", "train.lr=5e-2"]
    methods = ["none", "full", "trl-sft", "trl-sdft"]
    args = ["--out", str(out), "--tasks", "replies", "--steps", "2", "--model", tiny_dir, "--max-examples", "2"]
    frontier.main([*args, "--methods", *methods, "--override", *tiny])

    table = (out / "frontier.md").read_text()
    for m in methods:
        assert f"| {m} |" in table
        weights = load_file(str(out / "replies" / m / "adapter" / "adapter_model.safetensors"))
        assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())  # trained off LoRA's zero B
        config = json.loads((out / "replies" / m / "adapter" / "adapter_config.json").read_text())
        assert config["r"] == 4
    rows = {r["method"]: r for r in json.loads((out / "frontier.json").read_text())["replies"]}
    assert rows["none"]["kept"] == pytest.approx(1.0) or rows["none"]["gain"] == 0
    for r in rows.values():  # the same measures for every method, from the same evaluation
        assert r["kl"] > 0 and r["kl_task"] > 0 and 0 <= r["agreement"] <= 1 and r["train_seconds"] > 0
    assert (out / "frontier.png").stat().st_size > 10_000
    teacher = json.loads((out / "replies" / "sdft-teacher.json").read_text())  # what SDFT's teacher answers
    assert teacher["n"] == 2 and 0 <= teacher["chrf"] <= 100 and "SDFT's teacher" in table
    again = json.loads((out / "replies" / "trl-sft" / "frontier.json").read_text())
    frontier.main([*args, "--methods", "trl-sft", "--override", *tiny])  # a finished method is reused
    assert json.loads((out / "replies" / "trl-sft" / "frontier.json").read_text()) == again
