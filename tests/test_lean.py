"""Batching without waste and lean losses: packing, length grouping, chunked CE/KL, the cached teacher.

Every lean path is checked against the plain computation it replaces (values and gradients).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from forgetless import adapters, outputs, teacher_cache
from forgetless.config import ForgettingConfig, PeftConfig
from forgetless.data.batching import Batches, collate
from forgetless.data.mixture import MixedBatches
from forgetless.data.packing import bins, collate_packed, padding_share
from forgetless.data.render import IGNORE
from forgetless.forgetting import counts, make_loss
from forgetless.losses import ce_sum, ce_sum_chunked, kl_sum, kl_sum_chunked, kl_topk_sum


def _rows(lengths, start=0, rehearsal=False):
    """Rows of the given lengths: prompt tokens masked, the last third as the answer."""
    out = []
    for j, n in enumerate(lengths):
        ids = [(7 * (start + j) + 3 * t) % 900 + 10 for t in range(n)]
        cut = n - max(1, n // 3)
        out.append({"input_ids": ids, "labels": [IGNORE] * cut + ids[cut:], "rehearsal": rehearsal})
    return out


def test_bins_are_few_and_balanced():
    assert bins([5, 3, 4, 2], 8) == [[0, 3], [1, 2]]  # 14 tokens -> 2 sequences: 5+2 | 4+3
    assert bins([10, 2], 6) == [[0], [1]]
    assert bins([13, 87, 94, 26], 128) == [[0, 2], [1, 3]]  # 107 | 113 instead of 94+26 | 87+13
    assert bins([], 8) == []
    # Under SDPA (cost 3456: SmolLM2's 2H + 1.5I) four full rows stay apart; with FlashAttention's
    # variable-length kernel (cost inf) they share one sequence.
    assert bins([256] * 4, 1024, 3456) == [[0], [1], [2], [3]]
    assert bins([256] * 4, 1024) == [[0, 1, 2, 3]]
    assert bins([60, 70, 50, 40, 120], 1024, 3456) == [[2, 4], [0, 1, 3]]  # 170 + 170: no padding, shorter W


def test_packed_collate_resets_positions_and_masks_row_boundaries():
    rows = _rows([4, 3, 5]) + _rows([2], rehearsal=True)
    b = collate_packed(rows, pad_id=0, capacity=8)
    assert b["input_ids"].shape == (2, 7)  # rows [2, 3] (5+2) | [0, 1] (4+3): no padding at all
    assert int(b["attention_mask"].sum()) == 14
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1]
    assert b["position_ids"][1].tolist() == [0, 1, 2, 3, 0, 1, 2]
    assert b["labels"][0, 5].item() == IGNORE  # nothing predicts the next row's first token
    assert b["rehearsal"][0].tolist() == [False] * 5 + [True] * 2
    b = collate_packed(_rows([4, 2]), pad_id=0, capacity=4)
    assert b["position_ids"][1].tolist() == [0, 1, 0, 1]  # the padded tail: a segment of its own


def _lora(tiny_dir, seed=0):
    torch.manual_seed(seed)
    model = adapters.attach(
        AutoModelForCausalLM.from_pretrained(tiny_dir), PeftConfig(r=4), quantized=False, grad_checkpointing=False
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model.eval()  # no dropout: padded and packed passes must agree


def test_packed_rows_see_exactly_their_padded_logits(tiny_dir):
    model = _lora(tiny_dir)
    rows = _rows([9, 4, 6, 3])
    padded, packed = collate(rows, 0), collate_packed(rows, 0, capacity=16)
    with torch.no_grad():
        a = model(**outputs.model_inputs(padded)).logits
        b = model(**outputs.model_inputs(packed)).logits
    got = b[packed["attention_mask"].bool()]  # real tokens in packed order
    order = [i for g in bins([9, 4, 6, 3], 16) for i in g]
    want = torch.cat([a[i, : len(rows[i]["input_ids"])] for i in order])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("preset", ["full", "lwf", "none"])
def test_loss_terms_and_gradients_equal_on_packed_and_padded_batches(tiny_dir, preset):
    cfg = ForgettingConfig(preset=preset, rehearsal={"weight": 0.5} if preset == "full" else {})
    rows = _rows([12, 5, 8]) + _rows([10, 7], start=50, rehearsal=True)
    results = []
    for batch in (collate(rows, 0), collate_packed(rows, 0, capacity=24)):
        model = _lora(tiny_dir)
        norms = {k: float(v) for k, v in counts(batch, cfg).items()}
        terms = make_loss(cfg, chunk=7)(model, batch, norms)  # chunk 7: several checkpointed slices
        sum(terms.values()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((counts(batch, cfg), {k: v.item() for k, v in terms.items()}, grads))
    (c1, t1, g1), (c2, t2, g2) = results
    assert c1 == c2
    assert t1.keys() == t2.keys() and all(t1[k] == pytest.approx(t2[k], rel=1e-4, abs=1e-6) for k in t1)
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], rtol=1e-3, atol=1e-5)


def test_lean_loss_equals_the_plain_full_logits_loss(tiny_dir):
    """The hidden-state path (head on selected positions) against CE/KL on full logits by hand."""
    model = _lora(tiny_dir)
    cfg = ForgettingConfig(preset="lwf")
    batch = collate(_rows([12, 6, 9]), 0)
    norms = {k: float(v) for k, v in counts(batch, cfg).items()}
    terms = make_loss(cfg, chunk=5)(model, batch, norms)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    with torch.no_grad(), adapters.base_view(model) as base:
        t_logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ce = ce_sum(logits, batch["labels"]) / norms["targets"]
    real = batch["attention_mask"][:, 1:].bool() & (batch["labels"][:, 1:] == IGNORE)
    kl = 0.5 * kl_sum(logits[:, :-1][real], t_logits[:, :-1][real]) / norms["kl"]
    assert terms["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert terms["lwf"].item() == pytest.approx(kl.item(), rel=1e-5)


@pytest.mark.parametrize("chunk", [3, 100])
@pytest.mark.parametrize("direction", ["finetuned_base", "base_finetuned"])
def test_chunked_ce_and_kl_equal_plain_values_and_gradients(chunk, direction):
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    states = torch.randn(11, 8, requires_grad=True)
    teacher = torch.randn(11, 8)
    targets = torch.randint(0, 50, (11,))
    t_logits = head(teacher).detach()  # the teacher carries no gradient
    plain = F.cross_entropy(head(states), targets, reduction="sum") + kl_sum(head(states), t_logits, 2.0, direction)
    g_plain = torch.autograd.grad(plain, [states, head.weight])
    lean = ce_sum_chunked(states, targets, head, chunk)
    lean = lean + kl_sum_chunked(states, teacher, 2.0, direction, head, head, chunk)
    g_lean = torch.autograd.grad(lean, [states, head.weight])
    torch.testing.assert_close(lean, plain)
    for a, b in zip(g_lean, g_plain, strict=True):
        torch.testing.assert_close(a, b)


def test_topk_kl_by_hand_and_against_the_exact_kl():
    """p_s = softmax(0, 0, ln 2) = (1/4, 1/4, 1/2); teacher keeps its top-1 token 2 with p_t = 0.8.
    Coarsened: student (1/2 on token 2, 1/2 tail), teacher (0.8, 0.2):
    KL(s‖t) = ½ ln(0.5/0.8) + ½ ln(0.5/0.2) = ½ ln(0.625·2.5) = ½ ln 1.5625 = 0.2231."""
    student = torch.tensor([[0.0, 0.0, math.log(2)]])
    got = kl_topk_sum(student, torch.tensor([[2]]), torch.tensor([[math.log(0.8)]]), torch.tensor([math.log(0.2)]))
    assert got.item() == pytest.approx(0.5 * math.log(1.5625), abs=1e-6)
    torch.manual_seed(1)
    s, t = torch.randn(6, 40), torch.randn(6, 40)
    log_t = F.log_softmax(t, -1)
    exact = kl_sum(s, t)
    top, idx = log_t.topk(40)  # k = V: no tail, the exact KL
    whole = kl_topk_sum(s, idx, top, torch.full((6,), -30.0))
    assert whole.item() == pytest.approx(exact.item(), rel=1e-4)
    top, idx = log_t.topk(5)
    tail = torch.log1p(-top.exp().sum(-1))
    assert kl_topk_sum(s, idx, top, tail).item() <= exact.item() + 1e-6  # coarsening never adds KL


def test_cached_teacher_serves_padded_and_packed_batches_and_matches_online_kl(tiny_dir, tmp_path):
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    rows = _rows([12, 5, 8]) + _rows([10, 7], start=50, rehearsal=True)
    vocab = base.config.vocab_size
    cache = teacher_cache.build(base, rows, 0, k=vocab, temperature=1.0)
    teacher_cache.save(cache, tmp_path / "t.safetensors")
    cache = teacher_cache.load(tmp_path / "t.safetensors")
    assert cache.idx.shape == (sum(len(r["input_ids"]) - 1 for r in rows), vocab)
    cfg = ForgettingConfig(preset="lwf", lwf={"tokens": ["context", "rehearsal", "answers"]})
    for batch in (collate(rows, 0), collate_packed(rows, 0, capacity=24)):
        norms = {k: float(v) for k, v in counts(batch, cfg).items()}
        model = _lora(tiny_dir)
        online = make_loss(cfg)(model, batch, norms)["lwf"].item()
        cached = make_loss(cfg, teacher=cache)(model, batch, norms)["lwf"].item()
        assert cached == pytest.approx(online, rel=2e-3)  # k = V; the gap is the float16 storage
    with pytest.raises(KeyError, match="missing from the cached teacher"):
        cache.row([1, 2, 3])


def test_cached_teacher_is_reused_only_when_it_fits(tiny_dir, tmp_path, monkeypatch):
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    rows, path = _rows([6, 4]), tmp_path / "t.safetensors"
    teacher_cache.cached(base, rows, 0, 4, 1.0, path)
    built = []
    monkeypatch.setattr(teacher_cache, "build", lambda *a, **k: built.append(a) or teacher_cache.load(path))
    teacher_cache.cached(base, rows, 0, 4, 1.0, path)
    assert not built
    teacher_cache.cached(base, rows, 0, 8, 1.0, path)  # another k: rebuilt
    assert len(built) == 1


def test_length_grouping_keeps_every_row_once_and_cuts_padding():
    rows = _rows([5 + (37 * i) % 90 for i in range(64)])
    plain, grouped = Batches(rows, 4, 0, 0), Batches(rows, 4, 0, 0, group_by_length=True)
    for b in (plain, grouped):
        assert sorted(i for mb in b.micro_batches(1) for i in mb) == list(range(64))
    assert padding_share(grouped.lengths(), None) < padding_share(plain.lengths(), None) / 2
    packed = Batches(rows, 4, 0, 0, pack=128)
    assert padding_share(packed.lengths(), 128) < padding_share(plain.lengths(), None) / 2
    note, numbers = packed.padding_note()
    assert "packed" in note and numbers["padding_share"] < numbers["padding_share_padded"]


def test_packed_rehearsal_batches_hold_the_same_rows():
    task, general = _rows([6, 9, 4, 7]), _rows([20, 15, 18], start=90)
    padded = MixedBatches(task, general, 2, 0.3, 0, 0)
    packed = MixedBatches(task, general, 2, 0.3, 0, 0, pack=64)
    for (t, g), p in zip(padded.epoch(0), packed.epoch(0), strict=True):
        assert isinstance(p, dict)  # short rows: one packed batch
        assert int(p["attention_mask"].sum()) == int(t["attention_mask"].sum() + g["attention_mask"].sum())
        assert int(p["rehearsal"][p["attention_mask"].bool()].sum()) == int(g["attention_mask"].sum())
    assert len(padded.lengths()[0]) == 2  # task and general parts, padded separately
    # Four full rows and a short rehearsal row: apart, as the padded batches would be.
    full = MixedBatches(_rows([256] * 4), _rows([97]), 4, 0.2, 0, 0, pack=1024, pack_cost=3456)
    first = next(full.epoch(0))
    assert isinstance(first, list) and [b["input_ids"].shape for b in first] == [(4, 256), (1, 97)]
    assert padding_share(full.lengths(), 1024, 3456) == 0


def test_prompt_tuning_falls_back_to_logits(tiny_dir):
    torch.manual_seed(0)
    model = adapters.attach(
        AutoModelForCausalLM.from_pretrained(tiny_dir),
        PeftConfig(method="prompt", virtual_tokens=4),
        quantized=False,
        grad_checkpointing=False,
    )
    assert not outputs.lean(model)
    batch = collate(_rows([6, 4]), 0)
    out = outputs.hidden(model, batch)
    assert out.head is None and out.states.shape == (2, 6, model.config.vocab_size)
