"""Ways to run the same model in less memory or time: gradient checkpointing and Liger's fused kernels.

Chosen at attach time (`train.gradient_checkpointing`, `train.liger`) and, for checkpointing, also mid-run
by the loop's out-of-memory fallback (training/oom.py).
"""

from __future__ import annotations

import torch

from forgetless.errors import UserError


def use_grad_checkpointing(setting, dev: torch.device) -> bool:
    """auto: on for GPUs (memory is the limit there), off on CPU (it only costs time)."""
    return dev.type == "cuda" if setting == "auto" else bool(setting)


def enable_grad_checkpointing(model) -> None:
    """Recompute each block's activations in backward. Non-reentrant: works with frozen inputs and DDP.
    Also used mid-run by the loop's out-of-memory fallback (on a PEFT model or a plain one)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    inner.enable_input_require_grads()


def apply_liger(model, dev: torch.device) -> None:
    """`train.liger`: swap RMSNorm, RoPE and the SwiGLU MLP for Liger's fused Triton kernels. The loss
    kernels stay off: forgetless computes its losses on selected positions itself (model/forward.py)."""
    if dev.type != "cuda":
        raise UserError("train.liger needs a CUDA GPU (Liger's kernels are written in Triton); set train.liger=false")
    try:
        # optional (CUDA only): pip install liger-kernel
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        raise UserError("train.liger needs liger-kernel: pip install liger-kernel") from None
    _apply_liger_kernel_to_instance(model=model, cross_entropy=False, fused_linear_cross_entropy=False)
