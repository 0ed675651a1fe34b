"""LoRA's update added to the frozen layer's output in one BLAS call.

PEFT's LoRA linear computes `result = base(x) + lora_B(lora_A(dropout(x))) * scaling`: besides the two thin
matmuls, that is a multiplication and an addition over the full output width (N × out_features), each a
fresh tensor, and in backward one more multiplication by `scaling` over the same width. On a CPU these
passes are memory-bound and were about 5% of a LoRA step on the embedded model (`aten::mul` and
`aten::add` in the step profile). `addmm_` does the same arithmetic inside the matrix product:
`result += scaling · h Bᵀ` with h = A(dropout(x)), written into the base output (which nothing saved for
backward), and its backward scales only the thin (N × r) and (r × out) gradients.

`fuse_outputs(model)` turns every plain PEFT LoRA linear into `FusedOutputLinear`, the same module with
this forward. `scaling` is read on every call, so tune-scale's and the per-layer dial's scales hold; any
case the fused form does not cover (several or no active adapters, disabled or merged adapters, DoRA
and other variants, per-row adapter names in serving, a bias on B, mixed dtypes, a non-Linear base)
takes PEFT's own forward. Same values within float rounding (tests/adapters/test_lora_output.py).
"""

from __future__ import annotations

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn


class FusedOutputLinear(LoraLinear):
    """PEFT's LoRA linear whose update is accumulated into the base output by one `addmm_`."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        active = self.active_adapters
        name = active[0] if len(active) == 1 else None
        plain = (
            not args
            and not kwargs
            and name is not None
            and name in self.lora_A
            and name not in self.lora_variant
            and not self.disable_adapters
            and not self.merged
            and not self.fan_in_fan_out
            and type(self.base_layer) is nn.Linear
            and self.lora_B[name].bias is None
        )
        if not plain:
            return super().forward(x, *args, **kwargs)
        a, b = self.lora_A[name], self.lora_B[name]
        # dropout sees x itself: SharedDropout recognises the tensor q, k and v share by its identity
        h = a(self.lora_dropout[name](x))
        result = self.base_layer(x.reshape(-1, x.shape[-1]))  # 2-D and fresh: accumulated into in place
        if result.dtype != h.dtype or b.weight.dtype != h.dtype:  # e.g. an fp32 adapter on a bf16 base
            return super().forward(x)
        result.addmm_(h.reshape(-1, h.shape[-1]), b.weight.t(), alpha=self.scaling[name])
        return result.view(*x.shape[:-1], result.shape[-1])


def fuse_outputs(model: nn.Module) -> int:
    """Give every plain PEFT LoRA linear the fused forward (`FusedOutputLinear`); returns how many."""
    fused = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.__class__ = FusedOutputLinear
            fused += 1
    return fused
