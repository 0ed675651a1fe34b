"""Row-by-row SDPA for packed batches (model/packed_attention.py): the loader picks it on CPU, it gives
the masked SDPA's values and gradients on packed rows (two sequences, a padded tail), and it steps aside
for a sliding window shorter than a row and for calls without row boundaries (generation)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, MistralConfig

from forgetless.data.packing import collate_packed
from forgetless.model import forward, packed_attention
from forgetless.model import loader as models
from tests.conftest import save_tiny, token_rows


def test_the_loader_picks_row_attention_where_it_would_pick_sdpa_on_cpu():
    cpu = torch.device("cpu")
    assert models.attention("auto", cpu) == packed_attention.NAME
    assert models.attention("sdpa", cpu) == packed_attention.NAME
    assert models.attention("eager", cpu) == "eager"


def test_row_bounds_mark_every_row_and_each_sequence_start():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]])
    assert packed_attention.row_bounds(positions).tolist() == [0, 3, 5, 6, 10, 12]


def _pair(model_dir: str):
    """The same weights under masked SDPA and under row-by-row SDPA."""
    plain = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
    rows = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=packed_attention.NAME)
    return plain, rows


def _states_and_grads(model, batch):
    model.zero_grad()
    out = forward.hidden(model, batch)
    (out.states * torch.linspace(-1, 1, out.states.shape[-1])).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.states.detach(), grads


def test_rows_attended_alone_equal_the_masked_call(tiny_dir, monkeypatch):
    plain, rows = _pair(tiny_dir)
    # five rows over two sequences of 20 tokens: the second ends in a padded tail (its own segment)
    batch = collate_packed(token_rows([7, 5, 8, 9, 6], start=3), pad_id=0, capacity=20)
    assert batch["input_ids"].shape[0] == 2
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(kwargs.get("is_causal"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    got, got_grads = _states_and_grads(rows, batch)
    monkeypatch.undo()
    want, want_grads = _states_and_grads(plain, batch)
    segments = len(packed_attention.row_bounds(batch["position_ids"])) - 1
    assert calls == [True] * segments * rows.config.num_hidden_layers  # one causal call per row and layer
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)
    assert got_grads.keys() == want_grads.keys()
    # atol 1e-4: the embedding's gradient reaches 47 here and sums many rows' terms; on an AVX2-only CPU the
    # two attention layouts add them in orders 5e-5 apart on 2 of its 1.5M elements
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-4, msg=name)


def test_generation_and_short_sliding_windows_take_plain_sdpa(tokenizer, tmp_path):
    windowed = save_tiny(tmp_path / "mistral", MistralConfig, tokenizer, sliding_window=4)
    plain, rows = _pair(windowed)
    batch = collate_packed(token_rows([7, 9], start=3), pad_id=0, capacity=32)
    with torch.no_grad():
        torch.testing.assert_close(forward.hidden(rows, batch).states, forward.hidden(plain, batch).states)
        ids = batch["input_ids"][:, :6]
        torch.testing.assert_close(rows(input_ids=ids).logits, plain(input_ids=ids).logits)
