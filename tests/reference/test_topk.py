"""The cached top-k teacher: made once, found by row, equal to the online KL at k=V."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from forgetless.config.schema import ForgettingConfig
from forgetless.data.batching import collate
from forgetless.data.packing import collate_packed
from forgetless.objectives.sft import counts, objective
from forgetless.reference import topk
from tests.conftest import lora_model, token_rows


def test_cached_teacher_serves_padded_and_packed_batches_and_matches_online_kl(tiny_dir, tmp_path):
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    rows = token_rows([12, 5, 8]) + token_rows([10, 7], start=50, rehearsal=True)
    vocab = base.config.vocab_size
    cache = topk.build(base, rows, 0, k=vocab, temperature=1.0)
    topk.save(cache, tmp_path / "t.safetensors")
    cache = topk.load(tmp_path / "t.safetensors")
    assert cache.idx.shape == (sum(len(r["input_ids"]) - 1 for r in rows), vocab)
    cfg = ForgettingConfig(preset="lwf", lwf={"tokens": ["context", "rehearsal", "answers"]})
    for batch in (collate(rows, 0), collate_packed(rows, 0, capacity=24)):
        norms = {k: float(v) for k, v in counts(batch, cfg).items()}
        model = lora_model(tiny_dir).eval()
        online = objective(cfg).loss(model, batch, norms)["lwf"].item()
        cached = objective(cfg, teacher=cache).loss(model, batch, norms)["lwf"].item()
        assert cached == pytest.approx(online, rel=2e-3)  # k = V; the gap is the float16 storage
    with pytest.raises(KeyError, match="missing from the cached teacher"):
        cache.row([1, 2, 3])


def test_cached_teacher_is_reused_only_when_it_fits(tiny_dir, tmp_path, monkeypatch):
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    rows, path = token_rows([6, 4]), tmp_path / "t.safetensors"
    topk.cached(base, rows, 0, 4, 1.0, path)
    built = []
    monkeypatch.setattr(topk, "build", lambda *a, **k: built.append(a) or topk.load(path))
    topk.cached(base, rows, 0, 4, 1.0, path)
    assert not built
    topk.cached(base, rows, 0, 8, 1.0, path)  # another k: rebuilt
    assert len(built) == 1
