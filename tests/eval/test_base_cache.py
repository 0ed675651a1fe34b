"""The base side of the evaluation is computed once per model, eval set and settings, and reused:
a second run reads it (the same numbers to the last digit), a changed input computes it again."""

from __future__ import annotations

import json

import pytest

import forgetless
from forgetless.eval import suite
from tests.eval.test_report import _eval_overrides


def test_a_second_run_reuses_the_base_side_and_a_changed_eval_set_recomputes(
    tiny_overrides, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    calls = []
    measure = suite.measure
    # True for a base-side call: the fine-tuned side passes the base model's reference answers
    monkeypatch.setattr(suite, "measure", lambda *a, **k: calls.append(len(a) < 6) or measure(*a, **k))
    overrides = [*tiny_overrides, *_eval_overrides(tmp_path)]
    forgetless.train({}, [*overrides, f"output_dir={tmp_path / 'a'}"])
    assert calls == [True, False]  # base side, fine-tuned side
    assert "evaluating the base model" in capsys.readouterr().out
    stored = list((tmp_path / "cache" / "eval").glob("base-eval-model-*.json"))
    assert len(stored) == 1

    # another run (another learning rate): the base side comes from the cache, to the last digit
    forgetless.train({}, [*overrides, "train.lr=3e-3", f"output_dir={tmp_path / 'b'}"])
    assert calls == [True, False, False]
    assert "base model scores: reused" in capsys.readouterr().out
    before = [json.loads((tmp_path / run / "eval_before.json").read_text()) for run in ("a", "b")]
    assert before[0] == before[1]
    a, b = (json.loads((tmp_path / run / "eval.json").read_text()) for run in ("a", "b"))
    assert a["task"]["exact_match"]["base"] == b["task"]["exact_match"]["base"]
    assert (
        a["retention"]["benchmarks"]["mc.jsonl"]["acc"]["base"]
        == b["retention"]["benchmarks"]["mc.jsonl"]["acc"]["base"]
    )

    # a changed eval setting is another key: computed again, stored beside the first
    forgetless.train({}, [*overrides, "eval.max_new_tokens=5", f"output_dir={tmp_path / 'c'}"])
    assert calls == [True, False, False, True, False]
    assert len(list((tmp_path / "cache" / "eval").glob("base-eval-model-*.json"))) == 2


@pytest.mark.parametrize("recipe", ["quickstart", "quickstart-long"])
def test_the_shipped_base_scores_match_the_quickstart_as_it_is_now(tmp_path, recipe):
    """A fresh install's quickstart scores no base model only while the shipped file's key is the one
    the quickstart computes; any change to the eval settings' schema, the rows or the model changes it."""
    from pathlib import Path

    import torch

    from forgetless import api
    from forgetless.data.build import build
    from forgetless.eval import base_cache
    from forgetless.model import hardware
    from forgetless.model import loader as models

    cfg = api.load_config(recipe, [f"output_dir={tmp_path}/run"])
    path = models.resolve(cfg.model.name)
    data = build(cfg.data, models.load_tokenizer(path), cfg.train.seed)
    dev = torch.device("cpu")  # the shipped file is what a CPU install reads; a GPU's dtype is another key
    dtype = hardware.resolve_dtype(cfg.model.precision, dev)
    key = base_cache.key(cfg, path, str(dtype), dev.type, data.validation_examples, data.validation)
    shipped = Path(forgetless.__file__).parent / "assets" / "generated" / base_cache.file_name(cfg, key)
    assert shipped.is_file(), "the quickstart's base scores changed key: run python scripts/ship_base_scores.py"
