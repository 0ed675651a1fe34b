"""Batching without waste and lean losses: packing, length grouping, chunked CE/KL, the cached teacher.

Every lean path is checked against the plain computation it replaces (values and gradients).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config

from forgetless.adapters import attaching, views
from forgetless.config.schema import ForgettingConfig, PeftConfig
from forgetless.data.batching import collate
from forgetless.data.packing import bins, collate_packed
from forgetless.model import forward, hardware
from forgetless.model.likelihood import IGNORE, ce_sum
from forgetless.objectives.forgetting import teacher_autocast
from forgetless.objectives.losses import kl_sum
from forgetless.objectives.sft import counts, objective
from tests.conftest import lora_model, save_tiny, token_rows


def test_packed_rows_see_exactly_their_padded_logits(tiny_dir):
    model = lora_model(tiny_dir).eval()
    rows = token_rows([9, 4, 6, 3])
    padded, packed = collate(rows, 0), collate_packed(rows, 0, capacity=16)
    with torch.no_grad():
        a = model(**forward.model_inputs(padded)).logits
        b = model(**forward.model_inputs(packed)).logits
    got = b[packed["attention_mask"].bool()]  # real tokens in packed order
    order = [i for g in bins([9, 4, 6, 3], 16) for i in g]
    want = torch.cat([a[i, : len(rows[i]["input_ids"])] for i in order])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("preset", ["full", "lwf", "none"])
def test_loss_terms_and_gradients_equal_on_packed_and_padded_batches(tiny_dir, preset):
    cfg = ForgettingConfig(preset=preset, rehearsal={"weight": 0.5} if preset == "full" else {})
    rows = token_rows([12, 5, 8]) + token_rows([10, 7], start=50, rehearsal=True)
    results = []
    for batch in (collate(rows, 0), collate_packed(rows, 0, capacity=24)):
        model = lora_model(tiny_dir).eval()
        norms = {k: float(v) for k, v in counts(batch, cfg).items()}
        terms = objective(cfg, chunk=7).loss(model, batch, norms)  # chunk 7: several checkpointed slices
        sum(terms.values()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((counts(batch, cfg), {k: v.item() for k, v in terms.items()}, grads))
    (c1, t1, g1), (c2, t2, g2) = results
    assert c1 == c2
    assert t1.keys() == t2.keys() and all(t1[k] == pytest.approx(t2[k], rel=1e-4, abs=1e-6) for k in t1)
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], rtol=1e-3, atol=1e-5)


@pytest.fixture(scope="module")
def capped_dir(tmp_path_factory, tokenizer) -> str:
    """A tiny Gemma-2 whose logits are soft-capped at 2 (so the cap bends nearly every logit)."""
    return save_tiny(
        tmp_path_factory.mktemp("tiny-gemma2"),
        Gemma2Config,
        tokenizer,
        head_dim=8,
        query_pre_attn_scalar=8,
        final_logit_softcapping=2.0,
    )


@pytest.mark.parametrize("model_dir", ["tiny_dir", "capped_dir"])
def test_lean_loss_equals_the_plain_full_logits_loss(model_dir, request):
    """The hidden-state path (head on selected positions) against CE/KL on full logits by hand, values and
    gradients; for a soft-capped head (Gemma-2) the cap is applied to the selected positions."""
    model = lora_model(request.getfixturevalue(model_dir)).eval()
    assert forward.lean(model)
    capped = model_dir == "capped_dir"
    cfg = ForgettingConfig(preset="lwf")
    batch = collate(token_rows([12, 6, 9]), 0)
    norms = {k: float(v) for k, v in counts(batch, cfg).items()}
    assert isinstance(forward.hidden(model, batch).head, forward.SoftCapped) == capped
    terms = objective(cfg, chunk=5).loss(model, batch, norms)
    lean = torch.autograd.grad(sum(terms.values()), [p for p in model.parameters() if p.requires_grad])
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (logits.abs().max() < 2.0) == capped
    with torch.no_grad(), views.base_view(model) as base:
        t_logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ce = ce_sum(logits, batch["labels"]) / norms["targets"]
    real = batch["attention_mask"][:, 1:].bool() & (batch["labels"][:, 1:] == IGNORE)
    kl = 0.5 * kl_sum(logits[:, :-1][real], t_logits[:, :-1][real]) / norms["kl"]
    assert terms["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert terms["lwf"].item() == pytest.approx(kl.item(), rel=1e-5)
    plain = torch.autograd.grad(ce + kl, [p for p in model.parameters() if p.requires_grad])
    # atol 1e-5: the chunked sums add in another order, and AVX2 kernels round differently from AVX-512 ones
    # (1.7e-6 apart on one of 128 elements on an AVX2-only CPU)
    for a, b in zip(lean, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_prompt_tuning_falls_back_to_logits(tiny_dir):
    torch.manual_seed(0)
    model = attaching.attach(
        AutoModelForCausalLM.from_pretrained(tiny_dir),
        PeftConfig(method="prompt", virtual_tokens=4),
        quantized=False,
        grad_checkpointing=False,
    )
    assert not forward.lean(model)
    batch = collate(token_rows([6, 4]), 0)
    out = forward.hidden(model, batch)
    assert out.head is None and out.states.shape == (2, 6, model.config.vocab_size)


def test_a_bf16_teacher_keeps_the_lwf_term_and_gradients_near_the_exact_ones(tiny_dir):
    """lwf.teacher_precision bf16: only the teacher's forward runs under bf16 autocast (its base layers give
    bf16 outputs, the student's stay fp32); the term and the student's gradients stay close to the exact
    teacher's: a tolerance, since bf16 rounds the teacher's activations (docs/performance.md)."""
    batch = collate(token_rows([12, 6, 9]), 0)
    found = {}
    for precision in ("model", "bf16"):
        model = lora_model(tiny_dir).eval()
        seen: set[torch.dtype] = set()
        layer = next(m for n, m in model.named_modules() if n.endswith("q_proj.base_layer"))
        layer.register_forward_hook(lambda _m, _i, out, seen=seen: seen.add(out.dtype))
        cfg = ForgettingConfig(preset="lwf", lwf={"teacher_precision": precision})
        norms = {k: float(v) for k, v in counts(batch, cfg).items()}
        lwf = objective(cfg, chunk=5).loss(model, batch, norms)["lwf"]
        params = [p for p in model.parameters() if p.requires_grad]
        grad = torch.cat([g.flatten() for g in torch.autograd.grad(lwf, params)])
        found[precision] = (lwf.item(), grad, seen)
    (exact, g_exact, seen_exact), (rounded, g_rounded, seen_rounded) = found["model"], found["bf16"]
    assert seen_exact == {torch.float32} and seen_rounded == {torch.float32, torch.bfloat16}
    assert exact > 1e-3 and rounded == pytest.approx(exact, rel=0.05)
    assert torch.nn.functional.cosine_similarity(g_exact, g_rounded, dim=0) > 0.99
    assert g_rounded.norm() == pytest.approx(g_exact.norm().item(), rel=0.05)


@pytest.mark.parametrize(
    ("precision", "dtype", "native", "on"),
    [
        ("model", torch.float32, True, False),
        ("bf16", torch.float32, False, True),  # asked for: even where it is slower
        ("auto", torch.float32, True, True),
        ("auto", torch.float32, False, False),  # AVX2 only: bf16 is emulated there, slower than fp32
        ("auto", torch.bfloat16, True, False),  # a bf16 model's teacher is bf16 already
    ],
)
def test_the_teacher_runs_in_bf16_where_asked_or_where_the_cpu_multiplies_bf16(
    monkeypatch, precision, dtype, native, on
):
    monkeypatch.setattr(hardware, "cpu_bf16_native", lambda: native)
    with teacher_autocast(precision, torch.zeros(2, dtype=dtype)):
        assert torch.is_autocast_enabled("cpu") == on
