"""Rows of one batch through different LoRA adapters: two matmuls per layer for the whole batch.

PEFT mixes adapters in a batch (`adapter_names`) by cutting every LoRA layer's input into a sub-batch per
adapter: per layer and step an index, two matmuls and a scatter for each adapter, and a hook registered
on every layer for each forward. Here each LoRA layer's adapters are concatenated once along the rank,
A as [slots · r, in] and s·B as [out, slots · r] (slot 0 all zeros: the base; a smaller rank zero-padded,
an adapter without this layer zeros), so one matmul gives every row every adapter's r-dimensional
projection (a few dozen columns: cheap), a 0/1 mask keeps each row's own slot, and a second matmul adds
its s·B·A·x to the base layer's output, computed with the adapters switched off (PEFT's flag set directly:
its disable_adapter also flips requires_grad on every adapter weight, tens of ms a call on the embedded model
with three adapters in a one-off timing; inference needs none of it). No weights are gathered
per row (Punica's per-row gather copies each layer's B for every row: slower on a CPU than the waste of
multiplying by zeros). Plain LoRA only (the batcher mixes nothing else); dropout is off at inference.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer

from forgetless.deploy.chat import BASE


class Router:
    """The stacked adapters of a PEFT model and the forward hooks that apply them per row. Built by the
    batcher's warm-up (at start-up and after a run-time load; else on the first batch that needs them) and
    dropped (hooks removed) whenever an adapter is loaded or unloaded."""

    def __init__(self):
        self.slots: dict[str, int] = {}
        self.stacks: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}  # per layer: A, s·B
        self.rank = 0
        self.hooks: list = []
        self.rows: torch.Tensor | None = None  # [rows, 1, slots · r] 0/1: each row's own slot, while routed
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

    def build(self, model) -> None:
        """Stack the loaded adapters (once per set: `drop` clears them)."""
        names = list(model.peft_config)
        self.slots = {BASE: 0} | {name: i + 1 for i, name in enumerate(names)}
        layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
        self.rank = max(m.r[n] for m in layers for n in names if n in m.lora_A)  # one width for every layer's mask
        for module in layers:
            base, width = module.get_base_layer(), self.rank * len(self.slots)
            a, b = torch.zeros(width, base.in_features), torch.zeros(base.out_features, width)
            for n in (n for n in names if n in module.lora_A):
                r, start = module.r[n], self.slots[n] * self.rank
                a[start : start + r] = module.lora_A[n].weight.detach().float()
                b[:, start : start + r] = module.lora_B[n].weight.detach().float() * module.scaling[n]
            self.stacks[module] = (a, b)
            self.hooks.append(module.register_forward_hook(self._add))

    def _add(self, module, args, out: torch.Tensor):
        if self.rows is None:
            return None
        a, b = self.stacks[module]
        projected = F.linear(args[0].to(a.dtype), a) * self.rows  # [rows, positions, slots · r], own slot kept
        return out + F.linear(projected, b).to(out.dtype)

    @contextmanager
    def routed(self, model, names: list[str]):
        """A context in which `model`'s batch row i answers through adapter names[i] (`base`: none; a batch
        of base rows only computes the base layers, the hooks idle)."""
        if not self.stacks:
            self.build(model)
        own = torch.tensor([self.slots[n] for n in names])
        column_slot = torch.arange(len(self.slots)).repeat_interleave(self.rank)  # the slot of each of the slots · r
        self.rows = (own[:, None] == column_slot[None]).float()[:, None] if own.any() else None
        layers = list(self.stacks)
        try:
            for layer in layers:
                layer._disable_adapters = True  # PEFT's LoRA layer: the base layer's output alone
            yield
        finally:
            self.rows = None
            for layer in layers:
                layer._disable_adapters = False
