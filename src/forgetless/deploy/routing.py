"""Rows of one batch through different LoRA adapters, one gathered matmul per layer (Punica's BGMV, S-LoRA).

PEFT mixes adapters in a batch (`adapter_names`) by cutting every LoRA layer's input into a sub-batch per
adapter: per layer and step an index, two matmuls and a scatter for each adapter, and a hook registered
on every layer for each forward. Mixed batches took 2.2× the step of one adapter's (docs/deploy.md). Here
each LoRA layer's adapters are stacked once, A as [adapters + 1, r, in] and B as [adapters + 1, out, r]
(slot 0 all zeros: the base; a smaller rank zero-padded, an adapter without this layer all zeros), each
row gathers its own slot, and two batched matmuls add every row's s·B·A·x to the base layer's output,
computed with the adapters switched off. Plain LoRA only (the batcher mixes nothing else); dropout is
off at inference.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer

from forgetless.adapters.views import base_view
from forgetless.deploy.chat import BASE


class Router:
    """The stacked adapters of a PEFT model and the forward hooks that apply them per row. Made on the first
    mixed batch and dropped (hooks removed) whenever an adapter is loaded or unloaded."""

    def __init__(self):
        self.slots: dict[str, int] = {}
        self.stacks: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.hooks: list = []
        self.rows: torch.Tensor | None = None  # each batch row's slot, during a routed forward only
        self.ok: bool | None = None  # whether the adapters loaded can be stacked (None: not looked yet)

    def supports(self, model) -> bool:
        """Whether every LoRA layer is a plain linear one (LoRA on embeddings or convolutions: PEFT routes)."""
        if self.ok is None:
            self.ok = all(isinstance(m, LoraLinear) for m in model.modules() if isinstance(m, LoraLayer))
        return self.ok

    def drop(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.slots, self.stacks, self.hooks, self.ok = {}, {}, [], None

    def _build(self, model) -> None:
        names = list(model.peft_config)
        self.slots = {BASE: 0} | {name: i + 1 for i, name in enumerate(names)}
        for module in model.modules():
            if not isinstance(module, LoraLinear):
                continue
            mine = [n for n in names if n in module.lora_A]
            rank = max(module.r[n] for n in mine)
            base = module.get_base_layer()
            a = torch.zeros(len(names) + 1, rank, base.in_features)
            b = torch.zeros(len(names) + 1, base.out_features, rank)
            scale = torch.zeros(len(names) + 1)
            for n in mine:
                r, slot = module.r[n], self.slots[n]
                a[slot, :r] = module.lora_A[n].weight.detach().float()
                b[slot, :, :r] = module.lora_B[n].weight.detach().float()
                scale[slot] = module.scaling[n]
            self.stacks[module] = (a, b, scale)
            self.hooks.append(module.register_forward_hook(self._add))

    def _add(self, module, args, out: torch.Tensor):
        if self.rows is None:
            return None
        a, b, scale = self.stacks[module]
        x = args[0].to(a.dtype)  # [rows, positions, in]
        delta = torch.bmm(torch.bmm(x, a[self.rows].transpose(1, 2)), b[self.rows].transpose(1, 2))
        return out + (delta * scale[self.rows, None, None]).to(out.dtype)

    @contextmanager
    def routed(self, model, names: list[str]):
        """A context in which `model`'s batch row i answers through adapter names[i] (`base`: none)."""
        if not self.stacks:
            self._build(model)
        self.rows = torch.tensor([self.slots[n] for n in names])
        try:
            with base_view(model):
                yield
        finally:
            self.rows = None
