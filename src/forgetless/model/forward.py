"""What a training forward pass returns: final hidden states and the output head, not logits.

The losses need next-token distributions only where a loss term counts (answer tokens, the KL
positions), so the recipes take the last hidden states of the whole batch and apply the output
head to the selected positions, a slice at a time (`losses.ce_sum_chunked`, `kl_sum_chunked`).
Full-vocabulary logits for the whole batch are never made; with a 49k-token vocabulary they are
the largest tensor of a small model's step.

The model is still called through its own forward (so DDP's gradient hooks, PEFT's adapter
switches and the quantized layers behave as usual), with the head kept to one position; a forward
hook on the decoder captures its output. That position is given as an index tensor, not the count 1:
Gemma-4's decoder takes an integer count as leave to drop every earlier position before its
KV-sharing layers, which a generation step can afford and a training step cannot.

A config with logit soft-capping (Gemma-2's final_logit_softcapping: cap·tanh(logits/cap)) gets
its head wrapped in `SoftCapped`, which does the same to the selected positions: with a 256k-token
vocabulary the whole batch's logits are what such a model can least afford. Heads that do more than
that (families not in model/families.py, Granite's logit scaling) and PEFT methods that prepend
virtual tokens (prompt, prefix tuning) get their logits the plain way: `Outputs.head` is then None
and `Outputs.states` are logits.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from accelerate.utils import extract_model_from_parallel

from forgetless.model import packed_attention, shared_heads
from forgetless.model.families import family


@dataclass
class Outputs:
    states: torch.Tensor  # (B, T, H) final hidden states, or (B, T, V) logits when head is None
    head: torch.nn.Module | None


class SoftCapped(torch.nn.Module):
    """The output head followed by the config's logit soft-capping, in transformers' order of operations
    (divide, tanh, multiply) so that the logits are the model's own, bit for bit."""

    def __init__(self, head: torch.nn.Module, cap: float):
        super().__init__()
        self.head, self.cap = head, cap

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(states) / self.cap) * self.cap


def model_inputs(batch: dict[str, torch.Tensor], model=None) -> dict:
    """Keyword arguments of a training forward pass. Packed batches pass position ids and no attention
    mask: transformers derives the per-row (block-diagonal) causal mask from the position ids, but
    only without a KV cache, which the model would otherwise create (use_cache defaults to true).
    A `model` that attends row by row (packed_attention.NAME, forgetless's CPU default) also gets the
    rows' boundaries, so that it skips the blocks between rows."""
    if "position_ids" not in batch:
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    found = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    implementation = getattr(_unwrapped(model)[1].config, "_attn_implementation", None) if model is not None else None
    if implementation == packed_attention.NAME:
        bounds = packed_attention.row_bounds(batch["position_ids"])
        longest = int((bounds[1:] - bounds[:-1]).max())
        found |= {"cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds, "max_length_q": longest, "max_length_k": longest}
    return found


def _unwrapped(model):
    inner = extract_model_from_parallel(model)
    return inner, (inner.get_base_model() if hasattr(inner, "get_base_model") else inner)


def virtual_tokens(model) -> bool:
    """Whether the active adapter prepends virtual tokens (prompt / prefix tuning)."""
    inner, _ = _unwrapped(model)
    config = getattr(inner, "peft_config", {}).get(getattr(inner, "active_adapter", None))
    return config is not None and bool(getattr(config, "is_prompt_learning", False))


def cache_argument(model) -> str:
    """The forward keyword of a KV cache: transformers 5 renamed `past_key_values` to `cache`
    (the old name warns and goes away in 5.40; both are in the range forgetless supports)."""
    _, base = _unwrapped(model)
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def lean(model) -> bool:
    """Whether `hidden` can hand out hidden states and the output head (linear, or `SoftCapped`) for this model."""
    _, base = _unwrapped(model)
    known = family(getattr(getattr(base, "config", None), "model_type", None))  # no config: not a known family
    return known is not None and known.plain_head and not virtual_tokens(model)


def hidden(model, batch: dict[str, torch.Tensor], **extra) -> Outputs:
    """Final hidden states and the output head of `model` on `batch` (logits and None when not `lean`).
    `extra`: more keywords of the model call, for a lean model (a KV cache and position ids: model/prefix.py)."""
    if not lean(model):
        return Outputs(logits_of(model, batch["input_ids"], batch["attention_mask"], batch.get("position_ids")), None)
    _, base = _unwrapped(model)
    seen: dict[str, torch.Tensor] = {}

    def grab(_module, _args, out):
        seen["h"] = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    handle = base.get_decoder().register_forward_hook(grab)
    layout = shared_heads.plan(batch) if not extra and _may_share(model, base, batch) else None
    try:
        last = torch.zeros(1, dtype=torch.long, device=batch["input_ids"].device)
        model(**(layout.inputs() if layout else model_inputs(batch, model) | extra), logits_to_keep=last)
    finally:
        handle.remove()
    states = seen["h"]
    if layout is not None:  # back to the batch's own layout, token for token
        states = states.flatten(0, 1)[layout.index].view(*batch["input_ids"].shape, -1)
    head, cap = base.get_output_embeddings(), getattr(base.config, "final_logit_softcapping", None)
    return Outputs(states, SoftCapped(head, cap) if cap else head)


def _may_share(model, base, batch: dict[str, torch.Tensor]) -> bool:
    """Whether a packed batch may run its rows' common heads once (model/shared_heads.py): under the row-by-row
    attention, without a sliding window or soft-capped attention scores (which it leaves to plain SDPA), in a
    forward that draws no dropout (else each copy of a head draws its own)."""
    config = base.config
    return (
        "position_ids" in batch
        and getattr(config, "_attn_implementation", None) == packed_attention.NAME
        and getattr(config, "sliding_window", None) is None
        and getattr(config, "attn_logit_softcapping", None) is None
        and shared_heads.deterministic(model)
    )


def logits_at(model, batch: dict[str, torch.Tensor], where: torch.Tensor) -> torch.Tensor:
    """(N, V) next-token logits of `model` at the (B, T-1) shifted positions `where`, in row order: the
    output head runs at those positions only. An evaluation scores answer tokens, a fifth of the task
    rows' positions and half of the retention rows'; the head is a fifth of a small model's work per
    position (SmolLM2-135M: 28M of its 135M weights)."""
    out = hidden(model, batch)
    states = out.states[:, :-1][where]
    return states if out.head is None else out.head(states)


_PACKED_INPUTS = ("input_ids", "position_ids", "attention_mask")


def needed_part(batch: dict[str, torch.Tensor], where: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The part of `batch` a forward pass must see to give the hidden states at `where`, and where those
    states are in it: the model is causal, so a row (or, packed, a row's segment) is needed only up to its
    last chosen position, and a row with none not at all. LwF's teacher runs on this part: under the KL's
    default tokens (context, rehearsal) the task rows' answers come after every chosen position.

    `where` is (B, T-1) over shifted positions (the hidden state at t predicts token t+1), as the loss
    masks are. Returns (the inputs `model_inputs` reads, a (B', T') mask): `hidden(...).states[mask]` are
    the states at `where`, in the same order as `states[:, :-1][where]` on the whole batch. Packed rows
    are cut segment by segment and padded with a segment of their own, as `collate_packed` pads them."""
    ids = batch["input_ids"]
    need = torch.nn.functional.pad(where, (0, 1))  # (B, T); the last token's state predicts nothing
    at = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    chosen = torch.where(need, at, -1)
    if "position_ids" not in batch:  # one sequence per row: keep each row up to the longest needed prefix
        rows = need.any(1)
        width = int(chosen.max()) + 1
        part = {"input_ids": ids[rows, :width], "attention_mask": batch["attention_mask"][rows, :width]}
        return part, need[rows, :width]
    segment = (batch["position_ids"] == 0).cumsum(1)  # a row's segments, numbered from 1
    last = torch.full((ids.shape[0], ids.shape[1] + 1), -1, device=ids.device)
    last = last.scatter_reduce(1, segment, chosen, "amax")  # the last chosen position of each segment
    keep = at <= last.gather(1, segment)
    if bool(keep.all()):
        return batch, need
    rows = [b for b in range(ids.shape[0]) if keep[b].any()]
    width = max(int(keep[b].sum()) for b in rows)
    part = {k: torch.zeros((len(rows), width), dtype=torch.long, device=ids.device) for k in _PACKED_INPUTS}
    mask = torch.zeros((len(rows), width), dtype=torch.bool, device=ids.device)
    for i, b in enumerate(rows):
        n = int(keep[b].sum())
        part["input_ids"][i, :n] = ids[b][keep[b]]
        part["position_ids"][i, :n] = batch["position_ids"][b][keep[b]]
        part["position_ids"][i, n:] = torch.arange(width - n, device=ids.device)  # the padded tail: a segment
        part["attention_mask"][i, :n] = 1
        mask[i, :n] = need[b][keep[b]]
    return part, mask


def logits_of(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids=None) -> torch.Tensor:
    """(B, T, V) next-token logits aligned with input_ids. Prompt tuning prepends its virtual tokens
    to the sequence and returns their positions too: only the last T positions are the input's.
    Packed batches (`data.packing`) pass position ids instead of the attention mask."""
    # Packed rows need no KV cache: with one, transformers would not read the rows from the position ids.
    where = {"attention_mask": attention_mask}
    if position_ids is not None:
        where = model_inputs({"input_ids": input_ids, "position_ids": position_ids}, model)
        del where["input_ids"]
    out = model(input_ids=input_ids, **where).logits
    return out[:, -input_ids.shape[1] :]
