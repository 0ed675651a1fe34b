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


def _on_policy_run(tiny_overrides, tmp_path, max_kl: float, name: str) -> tuple[dict, list[dict]]:
    prompts = write_jsonl(tmp_path / "general.jsonl", [{"instruction": f"Tell me about topic {i}."} for i in range(5)])
    summary = forgetless.train(
        {},
        [
            *tiny_overrides,
            "forgetting.preset=full",
            "forgetting.rehearsal.source=on_policy",
            f"forgetting.rehearsal.prompts={prompts}",
            "forgetting.rehearsal.max_new_tokens=6",
            "forgetting.rehearsal.on_policy.every=2",
            "forgetting.rehearsal.on_policy.prompts=3",
            "forgetting.rehearsal.on_policy.max_new_tokens=6",
            f"forgetting.rehearsal.on_policy.max_kl={max_kl}",
            f"output_dir={tmp_path / name}",
        ],
    )
    log = tmp_path / name / "on_policy.jsonl"
    return summary, [json.loads(x) for x in log.read_text().splitlines()]


def test_on_policy_replay_records_every_answer_with_its_origin_and_replays_the_close_ones(
    tiny_overrides, tmp_path, monkeypatch
):
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    _, records = _on_policy_run(tiny_overrides, tmp_path, 1e6, "loose")
    assert [r["step"] for r in records] == [2] * 3 + [4] * 3  # none after the last step (6): nothing would replay them
    assert all(r["kept"] == bool(r["answer"].strip()) and r["kl_per_token"] >= 0 for r in records)
    assert any(r["kl_per_token"] > 0 for r in records)  # the trained model's answers, not the base's
    at = [r["replay_at"] for r in records if r["kept"]]  # replayed next, one rehearsal position each, in order
    assert at and at == sorted(set(at)) and all("replay_at" not in r for r in records if not r["kept"])
    metrics = [json.loads(x) for x in (tmp_path / "loose" / "metrics.jsonl").read_text().splitlines()]
    kept = [m["on_policy_kept"] for m in metrics if "on_policy_kept" in m]
    assert kept == [sum(r["kept"] for r in records if r["step"] == s) for s in (2, 4)]
    # each answering's cost beside it (outside train_seconds): three generations and their KL took time
    assert all(m["adjust_seconds"] > 0 for m in metrics if "on_policy_kept" in m)
    losses = [m for m in metrics if "loss" in m]
    assert any(m.get("ce_rehearsal", 0) > 0 for m in losses[2:])  # replayed with CE once they are in the pool

    _, records = _on_policy_run(tiny_overrides, tmp_path, 1e-9, "tight")
    assert not any(r["kept"] for r in records)  # nothing within the filter: the pool keeps the base's answers


def test_on_policy_replay_needs_rehearsal_rows():
    with pytest.raises(UserError, match="source on_policy: preset 'lwf' mixes no rehearsal rows in"):
        forgetless.load_config({}, ["forgetting.preset=lwf", "forgetting.rehearsal.source=on_policy"])
    with pytest.raises(UserError, match="on-policy replay's rows are new answers the cache cannot hold"):
        forgetless.load_config({}, ["forgetting.rehearsal.source=on_policy", "forgetting.lwf.teacher=cached"])
    cfg = forgetless.load_config({}, ["forgetting.rehearsal.source=on_policy", "train.epochs=3"])
    assert not cached_teacher(cfg, 10)  # auto: online
