"""benchmarks/sequential.py end to end on the tiny model: four stages chained with --continue-from under
on-policy replay, backward transfer and the final average from the chain's scores. (The real numbers:
docs/forgetting.md, from the embedded model.)"""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_benchmark

pytestmark = pytest.mark.seconds(30)  # the longest files start first (tests/conftest.py)


def test_four_stages_chain_and_report_backward_transfer(tiny_dir, tmp_path):
    sequential = load_benchmark("sequential")
    out = tmp_path / "sequential"
    tiny = ["train.batch_size=2", "train.grad_accum=1", "peft.r=4", "eval.max_new_tokens=4", "eval.benchmarks=[]"]
    tiny += ["eval.retention_max_prompts=3", "eval.retention_max_new_tokens=4", f"model.name={tiny_dir}"]
    tiny += ["forgetting.rehearsal.max_new_tokens=4", "forgetting.rehearsal.on_policy.every=1"]
    tiny += ["forgetting.rehearsal.on_policy.prompts=2", "forgetting.rehearsal.on_policy.max_new_tokens=4"]
    # two steps a stage: the current model answers after step 1 (never after a run's last step)
    args = ["--out", str(out), "--methods", "on-policy", "--seeds", "0", "--steps", "2", "2", "2", "2"]
    sequential.main([*args, "--max-examples", "2", "--override", *tiny])

    found = json.loads((out / "sequential.json").read_text())["methods"]["on-policy"][0]
    assert set(found["changes"]) == {"1-triage", "2-keigo", "3-orders"}
    assert found["bwt"] == sum(found["changes"].values()) / 3 and 0 <= found["final_average"] <= 1
    assert 0 < found["adjust_seconds"] < found["seconds"] and 0 < found["train_seconds"] < found["seconds"]
    stage = out / "on-policy" / "seed-0" / "4-reasoning"
    assert (stage / "on_policy.jsonl").is_file()  # the current model's answers, recorded
    table = (out / "sequential.md").read_text()
    assert "| on-policy |" in table and "4-reasoning: final_answer" in table
