"""Rows of one batch through different LoRA adapters: two matmuls per layer for the whole batch.

PEFT mixes adapters in a batch (`adapter_names`) by cutting every LoRA layer's input into a sub-batch per
adapter: per layer and step an index, two matmuls and a scatter for each adapter, and a hook registered
on every layer for each forward. Here each LoRA layer's adapters are concatenated once along the rank,
A as [slots · r, in] and s·B as [out, slots · r] (slot 0 all zeros: the base; a smaller rank zero-padded,
an adapter without this layer zeros), so one matmul gives every row every adapter's r-dimensional
projection (a few dozen columns: cheap), a 0/1 mask keeps each row's own slot, and a second matmul adds
its s·B·A·x to the base layer's output. No weights are gathered per row (Punica's per-row gather copies
each layer's B for every row: slower on a CPU than the waste of multiplying by zeros). A batch of one
adapter's rows (one client's request) multiplies by that adapter's own A and s·B, a batch of base rows by
the base layer alone.

While a batch is routed, each LoRA layer's `forward` is replaced by one that calls its base layer and
adds the above: PEFT's own forward (its checks, then the base layer with the adapters off) and a forward
hook after it cost Python calls on every layer at every decoding step, which a single row's step cannot
hide behind its small matmuls. PEFT's disable_adapter is never called (it flips requires_grad on every
adapter weight).
Plain LoRA only (the batcher mixes nothing else); dropout is off at inference.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer

from forgetless.deploy.chat import BASE


class Router:
    """The stacked adapters of a PEFT model, and the context that routes a batch's rows through them. Built
    by the batcher's warm-up (at start-up and after a run-time load; else on the first batch that needs
    them) and dropped whenever an adapter is loaded or unloaded."""

    def __init__(self):
        self.slots: dict[str, int] = {}
        self.stacks: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}  # per layer: A, s·B
        self.own: dict[torch.nn.Module, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}  # per layer, slot
        self.rank = 0
        self.ok: bool | None = None  # whether the adapters loaded can be stacked (None: not looked yet)

    def supports(self, model) -> bool:
        """Whether every LoRA layer is a plain linear one (LoRA on embeddings or convolutions: PEFT routes)."""
        if self.ok is None:
            self.ok = all(isinstance(m, LoraLinear) for m in model.modules() if isinstance(m, LoraLayer))
        return self.ok

    def drop(self) -> None:
        self.slots, self.stacks, self.own, self.ok = {}, {}, {}, None

    def build(self, model) -> None:
        """Stack the loaded adapters (once per set: `drop` clears them)."""
        names = list(model.peft_config)
        self.slots = {BASE: 0} | {name: i + 1 for i, name in enumerate(names)}
        layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
        self.rank = max(m.r[n] for m in layers for n in names if n in m.lora_A)  # one width for every layer's mask
        for module in layers:
            base, width = module.get_base_layer(), self.rank * len(self.slots)
            a, b = torch.zeros(width, base.in_features), torch.zeros(base.out_features, width)
            self.own[module] = {}
            for n in (n for n in names if n in module.lora_A):
                r, start = module.r[n], self.slots[n] * self.rank
                a[start : start + r] = module.lora_A[n].weight.detach().float()
                b[:, start : start + r] = module.lora_B[n].weight.detach().float() * module.scaling[n]
                self.own[module][self.slots[n]] = (a[start : start + r], b[:, start : start + r].contiguous())
            self.stacks[module] = (a, b)

    @contextmanager
    def routed(self, model, names: list[str]):
        """A context in which `model`'s batch row i answers through adapter names[i] (`base`: none)."""
        if not self.stacks:
            self.build(model)
        own = [self.slots[n] for n in names]
        rows = None
        if len(set(own)) > 1:  # mixed: every adapter's projection, each row's own slot kept by a 0/1 mask
            column_slot = torch.arange(len(self.slots)).repeat_interleave(self.rank)  # the slot of each column
            rows = (torch.tensor(own)[:, None] == column_slot[None]).float()[:, None]
        layers = list(self.stacks)
        try:
            for layer in layers:
                layer.forward = self._forward(layer, own[0], rows)
            yield
        finally:
            for layer in layers:
                vars(layer).pop("forward", None)  # PEFT's own forward again (also where setting it failed)

    def _forward(self, layer, slot: int, rows: torch.Tensor | None):
        """`layer`'s forward for this batch: its base layer plus the rows' s·B·A·x."""
        base = layer.get_base_layer()
        if rows is not None:
            a, b = self.stacks[layer]
        elif slot in self.own[layer]:
            a, b = self.own[layer][slot]
        else:  # base rows, or an adapter that does not adapt this layer
            return lambda x, *args, **kwargs: base(x, *args, **kwargs)

        def forward(x, *args, **kwargs):
            projected = F.linear(x.to(a.dtype), a)
            if rows is not None:
                projected = projected * rows  # [rows, positions, slots · r]: each row's own slot kept
            out = base(x, *args, **kwargs)
            return out + F.linear(projected, b).to(out.dtype)

        return forward
