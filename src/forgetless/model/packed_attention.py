"""SDPA that attends row by row in a packed batch: the CPU's variable-length attention.

A packed sequence (data/packing.py) holds several rows, each with position ids from 0. Under plain
SDPA transformers turns the position ids into a block-diagonal causal mask and the kernel computes
every block, masked or not: a sequence of four rows pays about four times the attention its rows
need (12% of a LoRA step on long-tailed rows, measured with `train.profile_steps`). FlashAttention-2
skips the other rows' blocks from `cu_seq_lens` on a GPU; on CPU there is no such kernel, so this
attention runs SDPA once per row, causal, on that row's slice: the same values as the masked call
(a test compares them), with the work of the rows alone. Rows laid out after one copy of their common
head (model/shared_heads.py, `shared_heads` keyword: per row the head's segment) run after its keys.

Registered with transformers as `forgetless_sdpa` (the loader picks it on CPU where it would pick
SDPA), with SDPA's own mask function, so a call without row boundaries — generation, evaluation, a
padded batch — is plain SDPA. The boundaries come from `forward.model_inputs` of a packed batch, as
transformers' `cu_seq_lens_q` keyword (the one FlashAttention-2 reads).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "forgetless_sdpa"


def row_bounds(position_ids: torch.Tensor) -> torch.Tensor:
    """Cumulative row boundaries over the flattened (sequences × width) tokens: a row starts wherever
    its position id is 0 (every sequence's first token, and its padded tail, which packing numbers from 0)."""
    flat = position_ids.flatten()
    starts = (flat == 0).nonzero().flatten()
    return torch.cat([starts, torch.tensor([flat.numel()], device=flat.device)]).to(torch.int32)


def by_rows(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention interface: per-row causal SDPA when `cu_seq_lens_q` marks the rows, else SDPA."""
    bounds = kwargs.get("cu_seq_lens_q")
    heads = kwargs.get("shared_heads")  # per row: the segment whose keys it continues (model/shared_heads.py)
    # Mistral passes its window to the interface, Qwen2 keeps it on the module
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    plain = (
        bounds is None
        or query.shape[2] != key.shape[2]  # a KV cache: not a training forward
        or not getattr(module, "is_causal", True)
        or kwargs.get("softcap") is not None
        or (window is not None and int(kwargs.get("max_length_q") or query.shape[2]) > window)
    )
    sequences, n_heads, width, dim = query.shape
    if plain and heads is not None:  # the shared layout's rows cannot be told apart by a mask
        raise RuntimeError("a shared-head layout needs row-by-row attention, which this call cannot take")
    if plain or len(bounds) - 1 == sequences:  # one row a sequence: nothing to skip, one batched call is faster
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    sizes = (bounds[1:] - bounds[:-1]).tolist()  # rows never cross sequences: each starts at position 0
    # The sequences laid end to end, then split into rows: split's backward is one concatenation, where
    # slicing row by row would give every row's gradient a zero-filled copy of the whole tensor.
    parts = [flat(t).split(sizes, dim=2) for t in (query, key, value)]
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    rows = []
    for j, (q, k, v) in enumerate(zip(*parts, strict=True)):
        h = heads[j] if heads is not None else -1
        if h >= 0:  # a row's own tokens after its head's: the head's queries too, their outputs dropped
            q, k, v = (torch.cat([part[h], t], dim=2) for part, t in zip(parts, (q, k, v), strict=True))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=gqa)
        rows.append(out[:, :, sizes[h] :] if h >= 0 else out)
    out = torch.cat(rows, dim=2)  # (1, heads, sequences × width, dim), in token order
    return out.transpose(1, 2).reshape(sequences, width, n_heads, dim), None


def flat(t: torch.Tensor) -> torch.Tensor:
    """(sequences, heads, width, dim) -> (1, heads, sequences × width, dim); a view for one sequence."""
    return t.transpose(0, 1).reshape(1, t.shape[1], -1, t.shape[3])


def register() -> None:
    """Make `NAME` an attention implementation transformers can load a model with (idempotent)."""
    AttentionInterface.register(NAME, by_rows)
    AttentionMaskInterface.register(NAME, sdpa_mask)


register()
