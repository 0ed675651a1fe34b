"""Attach parameter-efficient adapters to a loaded base model (LoRA / QLoRA for now).

The base weights stay frozen; only adapter weights train. With a quantized base, PEFT's
`prepare_model_for_kbit_training` casts the few non-quantized parts (norms) to fp32 for
stable training and hooks input gradients so that checkpointing works.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from accelerate.utils import extract_model_from_parallel
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

from forgetless.config import PeftConfig
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


def attach(model, cfg: PeftConfig, *, quantized: bool, grad_checkpointing: bool):
    ckpt_kwargs = {"use_reentrant": False}
    if quantized:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=grad_checkpointing, gradient_checkpointing_kwargs=ckpt_kwargs
        )
    elif grad_checkpointing:
        enable_grad_checkpointing(model)
    lora = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


@contextmanager
def base_view(model):
    """The base model from the same weights, adapters switched off (the LwF teacher).

    No second copy of the weights exists: PEFT routes the forward pass around the adapter
    layers inside this context. `model` may be wrapped by accelerate/DDP.
    """
    inner = extract_model_from_parallel(model)
    if not hasattr(inner, "disable_adapter"):
        raise UserError(
            "this needs the base model's predictions, but the model has no adapters to switch off "
            "(LwF and retention with full fine-tuning need a frozen copy of the base)"
        )
    with inner.disable_adapter():
        yield inner
