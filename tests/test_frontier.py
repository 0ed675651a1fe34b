"""benchmarks/frontier.py end to end on the tiny model: forgetless presets, TRL's SFT and SDFT trainers
each train a LoRA on the same rows, and one forgetless evaluation scores them all; the table and the
chart come out of one command. (The real numbers: docs/forgetting.md, from the embedded model.)"""

from __future__ import annotations

import json

import pytest
import yaml
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
    tiny += ["forgetting.rehearsal.on_policy.every=1", "forgetting.rehearsal.on_policy.max_new_tokens=4"]
    methods = ["none", "full", "on-policy", "trl-sft", "trl-sdft"]
    args = ["--out", str(out), "--tasks", "replies", "--steps", "2", "--model", tiny_dir, "--max-examples", "2"]
    frontier.main([*args, "--seeds", "0", "--methods", *methods, "--override", *tiny])

    table = (out / "frontier.md").read_text()
    for m in methods:
        assert f"| {m} |" in table
        weights = load_file(str(out / "replies" / m / "seed-0" / "adapter" / "adapter_model.safetensors"))
        assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())  # trained off LoRA's zero B
        config = json.loads((out / "replies" / m / "seed-0" / "adapter" / "adapter_config.json").read_text())
        assert config["r"] == 4
    first = json.loads((out / "frontier.json").read_text())
    rows = {r["method"]: r for r in first["replies"]}
    again_none = rows["none"]
    none_line = next(x for x in table.splitlines() if x.startswith("| none |"))
    assert "| 100% |" in none_line or rows["none"]["gain"] == 0  # the gain kept is against none's own
    for r in rows.values():  # the same measures for every method, from the same evaluation
        assert r["kl"] > 0 and r["kl_task"] > 0 and 0 <= r["agreement"] <= 1 and r["train_seconds"] > 0
    assert (out / "frontier.png").stat().st_size > 10_000
    teacher = json.loads((out / "replies" / "sdft-teacher.json").read_text())  # what SDFT's teacher answers
    assert teacher["n"] == 2 and 0 <= teacher["chrf"] <= 100 and "SDFT's teacher" in table
    assert (out / "replies" / "on-policy" / "seed-0" / "on_policy.jsonl").is_file()  # the model's own answers
    again = json.loads((out / "replies" / "trl-sft" / "seed-0" / "frontier.json").read_text())
    frontier.main([*args, "--seeds", "0", "--methods", "trl-sft", "--override", *tiny])  # a finished run is reused
    assert json.loads((out / "replies" / "trl-sft" / "seed-0" / "frontier.json").read_text()) == again

    seed0 = (out / "replies" / "none" / "seed-0" / "frontier.json").read_text()
    frontier.main([*args, "--seeds", "0", "1", "--methods", "none", "--override", *tiny])  # seed 0 reused, 1 trained
    assert (out / "replies" / "none" / "seed-0" / "frontier.json").read_text() == seed0  # not trained again
    seeds = [
        yaml.safe_load((out / "replies" / "none" / s / "config.yaml").read_text())["train"]["seed"]
        for s in ("seed-0", "seed-1")
    ]
    assert seeds == [0, 1]  # each folder's run trained with its own seed
    rows = json.loads((out / "frontier.json").read_text())["replies"]
    assert [r["seed"] for r in rows] == [0, 1] and rows[0]["gain"] == again_none["gain"]
    line = next(x for x in (out / "frontier.md").read_text().splitlines() if x.startswith("| none |"))
    assert " ± " in line and line.endswith("| 2 |")  # mean ± sd over the two seeds

    # --keep: a published frontier.json's other rows join the tables; the rows run now replace their own
    kept = tmp_path / "published.json"
    kept.write_text(json.dumps(first))
    frontier.main([*args, "--seeds", "0", "1", "--methods", "none", "--keep", str(kept), "--override", *tiny])
    rows = json.loads((out / "frontier.json").read_text())["replies"]
    assert [(r["method"], r["seed"]) for r in rows] == [("none", 0), ("none", 1)] + [(m, 0) for m in methods[1:]]
    assert all(f"| {m} |" in (out / "frontier.md").read_text() for m in methods)
    kept.write_text(json.dumps(first | {"machine": {**first["machine"], "cpu": "another CPU"}}))
    with pytest.raises(SystemExit, match="not mixed"):  # rows from another machine are refused
        frontier.main([*args, "--seeds", "0", "--methods", "none", "--keep", str(kept), "--override", *tiny])
    kept.write_text(json.dumps(first | {"settings": {**first["settings"], "steps": 99}}))
    with pytest.raises(SystemExit, match="not with this run's"):  # and rows trained for another number of steps
        frontier.main([*args, "--seeds", "0", "--methods", "none", "--keep", str(kept), "--override", *tiny])
    with pytest.raises(SystemExit, match="cannot read it"):  # a missing file: one line, before anything trains
        frontier.main([*args, "--seeds", "5", "--methods", "none", "--keep", str(tmp_path / "nope.json")])
    assert not (out / "replies" / "none" / "seed-5").exists()
