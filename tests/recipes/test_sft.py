"""The SFT recipe end to end on the tiny model."""

from __future__ import annotations

import json

import pytest

import forgetless
from forgetless.errors import UserError
from forgetless.recipes import compare
from forgetless.recipes.runtime import cached_teacher
from tests.conftest import write_jsonl


def test_full_preset_trains_with_every_term_and_reports_retention(tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    general = [{"instruction": f"Tell me fact {i}.", "output": f"Fact {i} is true."} for i in range(6)]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"instruction": f"Say {w}."} for w in ("yes", "no", "hi")])
    summary = forgetless.train(
        {},
        [
            *tiny_overrides,
            "forgetting.preset=full",
            f"forgetting.rehearsal.source={write_jsonl(tmp_path / 'general.jsonl', general)}",
            "forgetting.l2=0.1",
            "forgetting.rehearsal.weight=0.5",
            "forgetting.ewc.weight=1.0",
            "forgetting.ewc.samples=4",
            "eval.retention=true",
            f"eval.retention_prompts={prompts}",
            "eval.retention_max_new_tokens=6",
        ],
    )
    run = tmp_path / "run"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert {"ce", "ce_rehearsal", "lwf", "l2", "ewc"} <= set(lines[-1])
    assert (run / "ewc_fisher.safetensors").is_file()
    assert summary["general_rows"] == 6 and summary["forgetting_preset"] == "full"
    r = summary["retention"]
    assert r["n"] == 3 and r["kl_per_token"] > 0 and 0 <= r["agreement"] <= 1


def test_the_auto_teacher_is_cached_only_when_rows_are_seen_more_than_once():
    """One pass costs the online teacher as much as making the cache: cached only beyond one pass."""

    def cfg(*overrides):
        return forgetless.load_config({}, ["train.batch_size=4", "train.grad_accum=2", *overrides])

    assert not cached_teacher(cfg("train.max_steps=50"), 400)  # 50 × 8 = 400 rows: one pass
    assert cached_teacher(cfg("train.max_steps=51"), 400)
    assert cached_teacher(cfg("train.epochs=3"), 400) and not cached_teacher(cfg("train.epochs=1"), 400)
    assert not cached_teacher(cfg("train.max_steps=500", "forgetting.lwf.teacher=online"), 400)
    assert cached_teacher(cfg("train.max_steps=1", "forgetting.lwf.teacher=cached"), 400)


def test_compare_runs_the_budget_as_its_own_variant_and_the_presets_without_it():
    variants = compare.preset_variants(["none", "budget"], budget=True)
    assert variants["budget"] == ["forgetting.preset=full"]
    assert variants["none"] == ["forgetting.preset=none", *compare.NO_BUDGET]
    cfg = forgetless.load_config({}, ["forgetting.budget.kl=0.05"])
    assert compare.variant_config(cfg, "none", variants["none"]).forgetting.budget.kl is None  # not refused
    with pytest.raises(UserError, match="variant budget needs a budget in the config"):
        compare.preset_variants(["budget"], budget=False)
    rows = [compare.row(v, {"budget": b} if b is not None else {}, "exact_match") for v, b in
            (("none", None), ("budget", {"met": True}))]  # fmt: skip
    lines = compare.table(rows, "exact_match").splitlines()
    assert "| budget met |" in lines[0] and lines[2].count("| – |") >= 1 and "| yes |" in lines[3]
