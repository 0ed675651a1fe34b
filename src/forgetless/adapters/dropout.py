"""LoRA's input dropout, one mask per input: the projections that read the same tensor share it.

PEFT gives every adapted projection its own `nn.Dropout` on its input. In a decoder block q, k and v read
the same normed hidden states, and gate and up read the same ones again, so PEFT draws five masks where
two would do, and keeps five dropped copies of two tensors for backward. On CPU each mask is worse than
it looks: torch draws every element from its serial Mersenne Twister (about 6 ns an element, measured
with the step profile: `aten::bernoulli_` was 17% of a LoRA step on the embedded model).

`share_masks(model)` swaps each adapter's `nn.Dropout` for a `SharedDropout` that

- remembers the last tensor it dropped (by identity and version) and hands the same dropped tensor to
  the next projection that reads that very tensor: one mask for q/k/v and one for gate/up. Each
  adapter still sees its input dropped with probability p, as before; what changes is that the
  adapters of one block see the *same* mask on a shared input.
- on CPU, draws the mask from a PCG64 stream (numpy) seeded by one draw from torch's generator, 16
  random bits an element (about 1 ns): `torch.manual_seed` still decides every mask, and gradient
  checkpointing, which replays torch's generator, recomputes the very same masks. p is rounded to a
  multiple of 1/65536 (0.05 stays 0.05 within 8e-6). On a GPU torch's own dropout is already cheap and
  draws the mask.

Only the adapters' dropout changes; in eval mode and at p = 0 it is the identity, as nn.Dropout is.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
from torch import nn

BITS = 16  # random bits per element: p's resolution is 2**-16


class _Last:
    """The last input a model's SharedDropout modules dropped, weakly held, and what they made of it."""

    def __init__(self):
        self.input: weakref.ref | None = None
        self.version = -1
        self.p = -1.0
        self.output: torch.Tensor | None = None

    def __getstate__(self):  # a pickled or copied model starts with nothing remembered
        return {}

    def __setstate__(self, state):
        self.__init__()

    def get(self, x: torch.Tensor, p: float) -> torch.Tensor | None:
        same = self.input is not None and self.input() is x and self.version == x._version and self.p == p
        return self.output if same else None

    def put(self, x: torch.Tensor, p: float, output: torch.Tensor) -> None:
        self.input, self.version, self.p, self.output = weakref.ref(x), x._version, p, output


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """A boolean mask, True with probability 1 - p (p rounded to a multiple of 2**-BITS), on CPU."""
    seed = int(torch.randint(0, 2**62, ()).item())  # torch's generator decides, and checkpointing replays it
    n = int(np.prod(shape))
    words = np.random.PCG64(seed).random_raw((n * BITS + 63) // 64)
    values = torch.from_numpy(words.view(np.int16)[:n]).view(shape)  # uniform on [-2**15, 2**15)
    threshold = -(2 ** (BITS - 1)) + round(p * 2**BITS)
    return values >= threshold


class _Dropped(torch.autograd.Function):
    """x · keep / (1 - p), saving only the 1-byte mask for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x * scale, 0.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad * ctx.scale, 0.0), None, None


class SharedDropout(nn.Dropout):
    """nn.Dropout whose mask is shared with the modules of the same `last` that read the same tensor."""

    def __init__(self, p: float, last: _Last):
        super().__init__(p)
        self.last = last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        found = self.last.get(x, self.p)
        if found is None:
            if x.device.type == "cpu":
                found = _Dropped.apply(x, keep_mask(x.shape, self.p), 1.0 / (1.0 - self.p))
            else:
                found = nn.functional.dropout(x, self.p, training=True)
            self.last.put(x, self.p, found)
        return found


def share_masks(model: nn.Module) -> int:
    """Swap the adapters' nn.Dropout (PEFT's `lora_dropout`) for SharedDropout; returns how many."""
    last = _Last()
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if type(dropout) is nn.Dropout and dropout.p > 0:
                dropouts[name] = SharedDropout(dropout.p, last)
                swapped += 1
    return swapped
