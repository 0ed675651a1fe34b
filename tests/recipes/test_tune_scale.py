"""`forgetless tune-scale`: the adapter scaled between base (0) and trained (1), scored on the run's
held-out rows, the scale the budget picks saved where PEFT, merge, serve and export read it."""

from __future__ import annotations

import json

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from forgetless import api
from forgetless.adapters import layer_scales
from forgetless.adapters.merge import merge
from forgetless.errors import UserError
from forgetless.eval.retention import kl_to_base
from forgetless.eval.suite import references
from forgetless.model import loader as models
from forgetless.recipes import tune_scale
from forgetless.recipes.tune_scale import choose
from tests.conftest import tiny_args

EVAL = ["eval.retention=true", "eval.max_examples=2", "eval.max_new_tokens=4", "eval.retention_max_prompts=4"]
EVAL += ["eval.retention_max_new_tokens=4", "eval.report=true"]


def curve(*points):
    return [{"scale": s, "task": t, "kl_per_token": k} for s, t, k in points]


def test_the_budget_picks_the_scale():
    c = curve((0.25, 0.2, 0.01), (0.5, 0.5, 0.04), (0.75, 0.7, 0.09), (1.0, 0.8, 0.16))
    assert choose(c, max_kl=0.05, min_task=None) == 0.5  # most task within the KL budget
    assert choose(c, max_kl=1.0, min_task=None) == 1.0
    assert choose(c, max_kl=None, min_task=0.7) == 0.75  # least drift reaching the task score
    with pytest.raises(UserError, match=r"no scale keeps KL to base ≤ 0.001 \(the least, 0.0100, is at scale 0.25\)"):
        choose(c, max_kl=0.001, min_task=None)
    with pytest.raises(UserError, match="no scale reaches task 0.9"):
        choose(c, max_kl=None, min_task=0.9)


def test_tune_scale_saves_the_chosen_scale_with_the_adapter(tiny_dir, train_file, tmp_path):
    run = tmp_path / "run"
    overrides = tiny_args(tiny_dir, train_file, run, "train.lr=5e-2", "train.max_steps=4", *EVAL)
    api.train(api.load_config(None, overrides))
    cfg = api.load_config(str(run / "config.yaml"))
    trained_alpha = json.loads((run / "adapter" / "adapter_config.json").read_text())["lora_alpha"]

    first = tune_scale.run(cfg, run, max_kl=1e9, min_task=None)
    kl = {p["scale"]: p["kl_per_token"] for p in first["points"]}
    assert first["chosen"] == 1.0 and 0 < kl[0.25] < kl[0.5] < kl[1.0]
    for _ in range(2):  # a second dial starts from the trained adapter: scales do not compound
        t = tune_scale.run(cfg, run, max_kl=kl[0.5] * 1.0001, min_task=None)
        assert t["chosen"] == 0.5 and abs(t["points"][1]["kl_per_token"] - kl[0.5]) < 1e-6
        saved = json.loads((run / "adapter" / "adapter_config.json").read_text())
        assert saved["lora_alpha"] == pytest.approx(0.5 * trained_alpha)
    assert json.loads((run / "tune_scale.json").read_text())["trained"]["lora_alpha"] == trained_alpha
    assert "adapter scale dial" in (run / "report.md").read_text() and (run / "plots" / "scale.png").is_file()

    # whoever loads the adapter gets the chosen scale: PEFT (serve, chat, eval) and merge (export)
    model, tokenizer, path = models.load(cfg.model)
    refs = references(cfg, model, tokenizer, path, "torch.float32")
    loaded = PeftModel.from_pretrained(model, str(run / "adapter")).eval()
    assert kl_to_base(loaded, tokenizer, refs) == pytest.approx(kl[0.5], rel=1e-4)
    merge(str(run), tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    assert kl_to_base(merged, tokenizer, refs, base=base) == pytest.approx(kl[0.5], rel=1e-3)


def test_tune_scale_refuses_what_it_cannot_do(tmp_path):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    cfg = api.load_config(None, [f"output_dir={run}"])
    with pytest.raises(UserError, match="IA3 adapter; the dial scales LoRA only"):
        tune_scale.run(cfg, run, max_kl=0.1, min_task=None)
    with pytest.raises(UserError, match="give one budget"):
        tune_scale.run(cfg, run, max_kl=0.1, min_task=0.5)
    with pytest.raises(UserError, match=r"scales in \(0, 2\]"):
        tune_scale.run(cfg, run, max_kl=0.1, min_task=None, grid=[0.0, 1.0])
    with pytest.raises(UserError, match="no adapter/adapter_config.json"):
        tune_scale.run(cfg, tmp_path, max_kl=0.1, min_task=None)


def test_the_command_line_needs_one_budget_and_a_run(tmp_path, capsys):
    from forgetless.cli import main

    with pytest.raises(SystemExit):
        main(["tune-scale", str(tmp_path)])  # argparse: one of --max-kl / --min-task is required
    with pytest.raises(SystemExit):
        main(["tune-scale", str(tmp_path), "--max-kl", "0.1", "--min-task", "0.5"])
    with pytest.raises(SystemExit):
        main(["tune-scale", str(tmp_path), "--max-kl", "0.1", "--grid", "a,b"])
    assert main(["tune-scale", str(tmp_path), "--max-kl", "0.1"]) == 2
    assert "is not a run directory (no config.yaml)" in capsys.readouterr().err


def test_a_resumed_run_is_dialled_from_its_new_adapter_not_by_the_stale_choice(tiny_dir, train_file, tmp_path):
    """tune-scale chose 0.5; `train --resume` then saved the adapter again at the trained alpha while
    tune_scale.json stayed, and the next tune-scale scaled by 1/0.5 (KL at "scale 1" was the KL at 2)."""
    run = tmp_path / "run"
    overrides = tiny_args(tiny_dir, train_file, run, "train.lr=5e-2", "train.max_steps=4", *EVAL)
    api.train(api.load_config(None, overrides))
    cfg = api.load_config(str(run / "config.yaml"))
    trained_alpha = json.loads((run / "adapter" / "adapter_config.json").read_text())["lora_alpha"]
    kl = {p["scale"]: p["kl_per_token"] for p in tune_scale.run(cfg, run, max_kl=1e9, min_task=None)["points"]}
    assert tune_scale.run(cfg, run, max_kl=kl[0.5] * 1.0001, min_task=None)["chosen"] == 0.5

    stale = json.loads((run / "tune_scale.json").read_text())
    api.train(api.load_config(None, [*overrides, "train.max_steps=5"]), resume=True)
    assert not (run / "tune_scale.json").exists()  # the new adapter is at its trained scale
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["lora_alpha"] == trained_alpha
    (run / "tune_scale.json").write_text(json.dumps(stale))  # as a run from before this fix left it
    again = tune_scale.run(cfg, run, max_kl=1e9, min_task=None)
    model, tokenizer, path = models.load(cfg.model)
    refs = references(cfg, model, tokenizer, path, "torch.float32")
    fresh = PeftModel.from_pretrained(model, str(run / "adapter")).eval()
    assert again["points"][-1]["kl_per_token"] == pytest.approx(kl_to_base(fresh, tokenizer, refs), rel=1e-4)

    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(config | {"lora_alpha": 3.0}))
    with pytest.raises(UserError, match="neither the trained"):
        tune_scale.run(cfg, run, max_kl=1e9, min_task=None)


def test_layer_groups_patterns_and_factors():
    names = [f"model.layers.{i}.{m}" for i in range(6) for m in ("self_attn.q_proj", "mlp.down_proj")]
    groups = [layer_scales.group_of(n, 6) for n in names]
    assert groups[:4] == ["bottom/attention", "bottom/mlp"] * 2 and groups[-2:] == ["top/attention", "top/mlp"]
    assert layer_scales.group_of("model.layers.3.self_attn.o_proj", 6) == "middle/attention"
    scales = dict(zip(layer_scales.GROUPS, (0.5, 1.0, 0.25, 0.0, 1.0, 0.75), strict=True))
    config = {"lora_alpha": 16, "alpha_pattern": {"down_proj": 8}}
    pattern = layer_scales.alpha_pattern(config, names[:3], scales, 6)
    assert pattern == {"model.layers.0.self_attn.q_proj": 8.0, "model.layers.0.mlp.down_proj": 8.0,
                       "model.layers.1.self_attn.q_proj": 8.0}  # fmt: skip
    record = {"chosen": 0.4, "layer_scales": scales, "layers": 6}
    assert layer_scales.factor(record, "model.layers.5.mlp.up_proj") == 0.75
    assert layer_scales.factor({"chosen": 0.4}, "model.layers.5.mlp.up_proj") == 0.4


def test_tune_scale_per_layer_keeps_the_best_candidate_within_the_budget(tiny_dir, train_file, tmp_path):
    """Every candidate (uniform, and each part at twice the rest's scale) sits within the budget; the kept one has the
    highest task score, its scales are saved as the adapter's alpha_pattern and PEFT loads them back; a
    second dial starts from the trained adapter."""
    run = tmp_path / "run"
    overrides = tiny_args(tiny_dir, train_file, run, "train.lr=5e-2", "train.max_steps=4", *EVAL)
    api.train(api.load_config(None, overrides))
    cfg = api.load_config(str(run / "config.yaml"))
    kl = {p["scale"]: p["kl_per_token"] for p in tune_scale.run(cfg, run, max_kl=1e9, min_task=None)["points"]}
    budget = kl[0.5]
    for _ in range(2):
        t = tune_scale.run(cfg, run, max_kl=budget, min_task=None, per_layer=True)
        found = t["layer_points"]
        assert [p["favoured"] for p in found] == ["uniform", "bottom", "middle", "top", "attention", "mlp"]
        assert all(p["kl_per_token"] <= budget for p in found) and 0.4 < t["chosen"] <= 0.5  # 1/32 steps
        for p in found[1:]:  # the favoured part at twice the rest's scale (at most 1), the rest below uniform
            part = layer_scales.FAVOURED[p["favoured"]]
            rest = {s for g, s in p["scales"].items() if g not in part}
            assert len(rest) == 1 and t["chosen"] / 2 <= min(rest) <= t["chosen"]
            assert all(p["scales"][g] == pytest.approx(min(1.0, 2 * min(rest))) for g in part)
        best = max(p["task"] for p in found)
        kept = t["layer_scales"] or {g: t["chosen"] for g in layer_scales.GROUPS}
        assert next(p for p in found if p["scales"] == kept)["task"] == best
    model, tokenizer, path = models.load(cfg.model)
    refs = references(cfg, model, tokenizer, path, "torch.float32")
    loaded = PeftModel.from_pretrained(model, str(run / "adapter")).eval()
    at_kept = next(p for p in found if p["scales"] == kept)["kl_per_token"]
    assert kl_to_base(loaded, tokenizer, refs) == pytest.approx(at_kept, rel=1e-4)
    assert "per-layer dial" in (run / "report.md").read_text()
    with pytest.raises(UserError, match="--per-layer searches within a KL budget"):
        tune_scale.run(cfg, run, max_kl=None, min_task=0.5, per_layer=True)
    saved_config = (run / "adapter" / "adapter_config.json").read_text()
    with pytest.raises(UserError, match=r"no scale keeps KL to base ≤ 1e-12 \(at 1/32 it is"):
        tune_scale.run(cfg, run, max_kl=1e-12, min_task=None, per_layer=True)
    assert (run / "adapter" / "adapter_config.json").read_text() == saved_config  # no null adapter saved
