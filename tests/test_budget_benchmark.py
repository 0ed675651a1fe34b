"""benchmarks/budget.py end to end on the tiny model: plain LoRA over seeds, then a budget stated from its
KL, held by every budget run or reported as not met; plain LoRA dialled to it per layer and uniformly;
the table, JSON and chart from one command. (The real numbers: docs/forgetting.md, from the embedded model.)"""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_benchmark


def test_the_budget_is_stated_from_plain_loras_kl_and_every_run_reports_against_it(tiny_dir, tmp_path):
    budget = load_benchmark("budget")
    out = tmp_path / "budget"
    tiny = ["train.batch_size=2", "train.grad_accum=1", "peft.r=4", "eval.max_new_tokens=4", "eval.benchmarks=[]"]
    tiny += ["eval.retention_max_prompts=4", "eval.retention_max_new_tokens=4", "train.lr=5e-2"]
    tiny += ["forgetting.budget.every=1", "forgetting.budget.probe_prompts=2", "forgetting.rehearsal.max_new_tokens=4"]
    args = ["--out", str(out), "--tasks", "replies", "--steps", "2", "--model", tiny_dir, "--max-examples", "2"]
    budget.main([*args, "--seeds", "0", "--fractions", "0.1", "--methods", "budget", "dials", "--override", *tiny])

    found = json.loads((out / "budget.json").read_text())
    rows = found["tasks"]["replies"]
    none = [r for r in rows if r["method"] == "none"]
    stated = [r for r in rows if r["method"] == "budget-10"]
    assert [r["seed"] for r in none] == [0] and [r["seed"] for r in stated] == [0]
    limit = round(0.1 * none[0]["kl"], 5)
    assert all(r["budget"] == pytest.approx(limit) and r["met"] is not None for r in stated)
    for r in stated:  # met: at or under the budget; not met: the closest point saved (the smallest scale)
        assert r["kl"] <= limit if r["met"] else r["scale"] == pytest.approx(1 / 32)
    assert all(r["met"] is None and r["budget"] is None for r in none)
    # plain LoRA's adapter dialled to the same budget, chosen on validation rows, scored on the test rows
    dials = {m: [r for r in rows if r["method"] == f"{m}-dial-10"] for m in ("layer", "uniform")}
    assert [r["seed"] for r in dials["layer"]] == [0] and [r["seed"] for r in dials["uniform"]] == [0]
    for r in dials["layer"] + dials["uniform"]:
        assert r["budget"] == pytest.approx(limit) and r["met"] and r["kl"] <= limit  # the dial meets it
    searched = json.loads((out / "replies" / "layer-budget-10" / "seed-0" / "tune_scale.json").read_text())
    assert dials["uniform"][0]["scale"] == pytest.approx(searched["chosen"])
    assert len(searched["layer_points"]) == 6  # the uniform scale and the five favoured parts
    assert (out / "data" / "replies-validation.jsonl").read_text() != (out / "data" / "replies-test.jsonl").read_text()
    table = (out / "budget.md").read_text()
    assert "| budget-10 |" in table and " of 1 |" in table and found["machine"]["cpu"]
    assert (out / "budget.png").stat().st_size > 10_000
