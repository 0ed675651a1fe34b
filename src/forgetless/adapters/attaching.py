"""Attach a fine-tuning method to a loaded base model (saving and loading it back: saved.py).

One config key (`peft.method`) chooses:
  PEFT's   lora, dora (LoRA with a learned magnitude), prefix, prompt, ia3   -> PEFT's format
  ours     adapter (Houlsby bottlenecks, bottleneck.py)                      -> safetensors + JSON
           bitfit, selective (some of the base's own weights, selective.py)  -> safetensors + JSON
           full (every weight)                                              -> a whole HF model
Our own layout is a directory with `forgetless_adapter.json` (method, base model, settings) and
`trained.safetensors` (the trained tensors under the base model's own parameter names); `load`
reads it back. With a quantized base, PEFT's `prepare_model_for_kbit_training` casts the few
non-quantized parts (norms) to fp32 for stable training and hooks input gradients so that
checkpointing works.
"""

from __future__ import annotations

import torch
from peft import (
    IA3Config,
    LoraConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    PromptTuningInit,
    get_peft_model,
    prepare_model_for_kbit_training,
)

from forgetless.adapters import bottleneck, selective
from forgetless.config.schema import PeftConfig
from forgetless.errors import UserError
from forgetless.model.speedups import enable_grad_checkpointing

PEFT_METHODS = {"lora", "dora", "prefix", "prompt", "ia3"}


def expert_weights(model) -> list[str]:
    """Mixture-of-experts weights stored as one 3-D tensor per layer (transformers 5 fuses Mixtral's
    experts this way): not nn.Linear, so `all-linear` misses them; PEFT adapts them as parameters."""
    found = set()
    for name, module in model.named_modules():
        if name.endswith("experts"):
            found |= {
                f"{name.split('.')[-2]}.experts.{p}" for p, t in module.named_parameters(recurse=False) if t.ndim == 3
            }
    return sorted(found)


def moe_linear_names(model) -> list[str]:
    """`all-linear` for a mixture of experts, spelled out: the blocks' linear layers except the router
    (`mlp.gate`). A shifted routing changes which experts every token reaches, the opposite of keeping
    what the base knew; and PEFT adds the router itself when given `all-linear` with expert weights."""
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and ".layers." in name and not name.endswith("mlp.gate")
        }
    )


def peft_config(cfg: PeftConfig, model_path: str | None = None, task_type: str = "CAUSAL_LM", moe=None):
    """PEFT's config object for the PEFT-provided methods. task_type SEQ_CLS (reward models) also
    trains and saves the score head (PEFT adds it to modules_to_save). `moe`: (linear layer names,
    fused expert weights) replacing `all-linear` on a mixture of experts."""
    if cfg.method in ("lora", "dora"):
        moe = moe if cfg.target_modules == "all-linear" else None
        return LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=moe[0] if moe else cfg.target_modules,
            target_parameters=moe[1] if moe else None,
            use_dora=cfg.method == "dora",
            bias="none",
            task_type=task_type,
        )
    if cfg.method == "prefix":
        return PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=cfg.virtual_tokens, prefix_projection=cfg.prefix_projection
        )
    if cfg.method == "prompt":
        from_text = cfg.prompt_init == "text"
        return PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=cfg.virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if from_text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=cfg.prompt_init_text if from_text else None,
            tokenizer_name_or_path=model_path if from_text else None,
        )
    return IA3Config(
        task_type="CAUSAL_LM",
        target_modules=cfg.ia3_target_modules,
        feedforward_modules=cfg.ia3_feedforward_modules,
    )


def check(model, cfg: PeftConfig) -> None:
    """Fail before any work when the method cannot apply to this model (e.g. BitFit without biases)."""
    if cfg.method in ("bitfit", "selective"):
        selective.chosen_names(model, cfg.method, cfg.layers, cfg.parts)


def prepare(model, *, quantized: bool, grad_checkpointing: bool):
    """Ready for training: PEFT's k-bit preparation for a quantized base, or gradient checkpointing."""
    ckpt_kwargs = {"use_reentrant": False}
    if quantized:
        return prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=grad_checkpointing, gradient_checkpointing_kwargs=ckpt_kwargs
        )
    if grad_checkpointing:
        enable_grad_checkpointing(model)
    return model


def attach(
    model,
    cfg: PeftConfig,
    *,
    quantized: bool,
    grad_checkpointing: bool,
    model_path: str | None = None,
    task_type: str = "CAUSAL_LM",
):
    """The model with `cfg.method` attached: only the method's parameters require gradients."""
    model = prepare(model, quantized=quantized, grad_checkpointing=grad_checkpointing)
    if cfg.method in PEFT_METHODS:
        experts = expert_weights(model)
        if experts and cfg.method in ("dora", "ia3"):
            raise UserError(
                f"peft.method={cfg.method}: {model.config.model_type} keeps its experts in fused 3-D weights, "
                "which PEFT adapts with LoRA only; use peft.method=lora (or prefix/prompt)"
            )
        if experts and cfg.dropout and cfg.target_modules == "all-linear":
            print(
                f"[forgetless] {model.config.model_type}: LoRA on the fused expert weights cannot use dropout "
                f"(PEFT applies it as a weight update); peft.dropout {cfg.dropout} -> 0 for this model"
            )
            cfg = cfg.model_copy(update={"dropout": 0.0})
        moe = (moe_linear_names(model), experts) if experts else None
        return get_peft_model(model, peft_config(cfg, model_path, task_type, moe))
    if cfg.method == "adapter":
        return bottleneck.attach(model, cfg.adapter_size, cfg.adapter_placement, cfg.adapter_activation)
    return selective.attach(model, cfg.method, cfg.layers, cfg.parts)


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
