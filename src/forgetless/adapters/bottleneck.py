"""Bottleneck adapters (Houlsby et al. 2019), which PEFT does not provide.

After the attention and/or MLP block of every transformer block, the block's output h becomes
    h + up(act(down(h)))
before it joins the residual stream. `up` starts at zero, so the untrained model computes
exactly what the base computes. The adapter modules live inside the blocks they follow
(`...self_attn.bottleneck`, `...mlp.bottleneck`) and run from a forward hook on that block, so
the base's own parameter names and code stay unchanged. An adapter cannot be merged into the
weights: the nonlinearity has no linear equivalent.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from forgetless.adapters.selective import blocks

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}
SITES = {"attention": "self_attn", "mlp": "mlp"}


class Bottleneck(nn.Module):
    def __init__(self, hidden: int, size: int, activation: str):
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(size, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.enabled = True

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return h
        # The adapter computes in its own dtype (fp32 weights beside a bf16 or 4-bit base).
        return h + self.up(self.act(self.down(h.to(self.down.weight.dtype)))).to(h.dtype)


def _after_block(module: nn.Module, args, output):
    """Forward hook: apply the block's adapter to its output (attention blocks return a tuple)."""
    if isinstance(output, tuple):
        return (module.bottleneck(output[0]), *output[1:])
    return module.bottleneck(output)


def attach(model, size: int, placement: list[str], activation: str):
    """Freeze the base and insert a trainable adapter after each chosen block of every layer."""
    model.requires_grad_(False)
    hidden = model.config.hidden_size
    device = next(model.parameters()).device
    for layer in blocks(model):
        for site in placement:
            block = getattr(layer, SITES[site])
            block.add_module("bottleneck", Bottleneck(hidden, size, activation).to(device))
            block.register_forward_hook(_after_block)
    return model


def present(model) -> bool:
    return any(isinstance(m, Bottleneck) for m in model.modules())


@contextmanager
def disabled(model):
    """The base model: every adapter passes its input through unchanged."""
    found = [m for m in model.modules() if isinstance(m, Bottleneck)]
    for m in found:
        m.enabled = False
    try:
        yield model
    finally:
        for m in found:
            m.enabled = True
