"""LoRA's update added to the frozen layer's output in one BLAS call.

PEFT's LoRA linear computes `result = base(x) + lora_B(lora_A(dropout(x))) * scaling`: besides the two thin
matmuls, that is a multiplication and an addition over the full output width (N × out_features), each a
fresh tensor, and in backward one more multiplication by `scaling` over the same width. On a CPU these
passes are memory-bound and were about 5% of a LoRA step on the embedded model (`aten::mul` and
`aten::add` in the step profile). `addmm_` does the same arithmetic inside the matrix product:
`result += scaling · h Bᵀ` with h = A(dropout(x)), written into the base output (which nothing saved for
backward), and its backward scales only the thin (N × r) and (r × out) gradients.

`fuse_outputs(model)` turns every plain PEFT LoRA linear into `FusedOutputLinear` (on a 4-bit base, QLoRA:
`FusedOutputLinear4bit`), the same module with this forward. `scaling` is read on every call, so
tune-scale's and the per-layer dial's scales hold; any case the fused form does not cover (several or no
active adapters, disabled or merged adapters, DoRA and other variants, per-row adapter names in serving,
a bias on B, mixed dtypes, a non-Linear base) takes PEFT's own forward. Same values within float rounding
(tests/adapters/test_lora_output.py).
"""

from __future__ import annotations

import torch
from peft.tuners.lora import bnb as lora_bnb
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

LoraLinear4bit = getattr(lora_bnb, "Linear4bit", None)


def _forward(self, x: torch.Tensor, args: tuple, kwargs: dict, pefts):
    """The fused forward where it applies, else `pefts` (PEFT's own forward)."""
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
        and not getattr(self, "fan_in_fan_out", False)
        and isinstance(self.base_layer, nn.Linear)  # bitsandbytes' Linear4bit is one too
        and self.lora_B[name].bias is None
        and x.dtype == self.lora_A[name].weight.dtype == self.lora_B[name].weight.dtype
        and not torch.is_autocast_enabled(x.device.type)  # autocast (the GPU path) casts per op: PEFT's forward
    )
    if not plain:
        return pefts(x, *args, **kwargs)
    a, b = self.lora_A[name], self.lora_B[name]
    # dropout sees x itself: SharedDropout recognises the tensor q, k and v share by its identity
    h = a(self.lora_dropout[name](x))
    result = self.base_layer(x.reshape(-1, x.shape[-1]))  # 2-D: accumulated into in place
    if result.dtype != h.dtype:  # a base computing in another dtype than its input: PEFT casts, so do we
        return result.view(*x.shape[:-1], -1) + (b(h) * self.scaling[name]).to(result.dtype)
    if result._base is not None:  # a view (what PEFT guards against for 4-bit kernels) is not written into
        result = result.clone()
    result.addmm_(h.reshape(-1, h.shape[-1]), b.weight.t(), alpha=self.scaling[name])
    return result.view(*x.shape[:-1], result.shape[-1])


class FusedOutputLinear(LoraLinear):
    """PEFT's LoRA linear whose update is accumulated into the base output by one `addmm_`."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return _forward(self, x, args, kwargs, super().forward)


FUSED = {LoraLinear: FusedOutputLinear}
if LoraLinear4bit is not None:  # PEFT defines it only where bitsandbytes is installed

    class FusedOutputLinear4bit(LoraLinear4bit):
        """PEFT's LoRA linear on a 4-bit base (QLoRA), fused the same way (and without PEFT's full-width clone
        of the base output, which the fused form does only when that output is a view)."""

        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            return _forward(self, x, args, kwargs, super().forward)

    FUSED[LoraLinear4bit] = FusedOutputLinear4bit


def fuse_outputs(model: nn.Module) -> int:
    """Give every plain PEFT LoRA linear, full-precision or 4-bit, the fused forward; returns how many."""
    fused = 0
    for module in model.modules():
        to = FUSED.get(type(module))
        if to is not None:
            module.__class__ = to
            fused += 1
    return fused
