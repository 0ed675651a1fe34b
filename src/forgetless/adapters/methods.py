"""Attach a fine-tuning method to a loaded base model, save its result, load it back.

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

from contextlib import contextmanager

import torch
from accelerate.utils import extract_model_from_parallel
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

PEFT_METHODS = {"lora", "dora", "prefix", "prompt", "ia3"}
OWN_FORMAT = "forgetless_adapter.json"
TRAINED = "trained.safetensors"


def use_grad_checkpointing(setting, dev: torch.device) -> bool:
    """auto: on for GPUs (memory is the limit there), off on CPU (it only costs time)."""
    return dev.type == "cuda" if setting == "auto" else bool(setting)


def enable_grad_checkpointing(model) -> None:
    """Recompute each block's activations in backward. Non-reentrant: works with frozen inputs and DDP.
    Also used mid-run by the loop's out-of-memory fallback (on a PEFT model or a plain one)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    inner.enable_input_require_grads()


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


def switchable(model) -> bool:
    """Whether base_view can give this model's base: a method is attached that it can switch off."""
    inner = extract_model_from_parallel(model)
    return hasattr(inner, "disable_adapter") or bottleneck.present(inner) or hasattr(inner, selective.INITIAL)


@contextmanager
def base_view(model):
    """The base model from the same weights (the LwF teacher, the retention and DPO reference).

    No second copy of the model exists: PEFT routes the forward pass around its adapter layers,
    our bottleneck adapters pass their input through, and bitfit/selective/full swap their
    trained tensors back to the initial values for the duration. `model` may be wrapped by
    accelerate/DDP. Use under no_grad.
    """
    inner = extract_model_from_parallel(model)
    if is_continued(inner):  # a continuation (adapters/continued.py): the base is the earlier run's model
        with previous_view(inner):
            yield inner
    elif hasattr(inner, "disable_adapter"):
        with inner.disable_adapter():
            yield inner
    elif bottleneck.present(inner):
        with bottleneck.disabled(inner):
            yield inner
    elif hasattr(inner, selective.INITIAL):
        with selective.initial_weights(inner):
            yield inner
    else:
        raise UserError("this needs the base model's predictions, but the model has no method attached to switch off")


# A run that continues an earlier run's adapter (adapters/continued.py) holds it twice.
PREVIOUS = "previous"
TRAINED = "default"


CONTINUED = "_forgetless_continued"  # set by continued.load_previous: adapter names alone are user-chosen in serve


def is_continued(inner) -> bool:
    """A model that trains a continuation and can switch to the earlier run's adapter."""
    configs = getattr(inner, "peft_config", None)
    return getattr(inner, CONTINUED, False) and isinstance(configs, dict) and TRAINED in configs


@contextmanager
def previous_view(inner):
    """A's model from the same weights: the frozen `previous` adapter active for the duration.
    PEFT's set_adapter also sets requires_grad; the flags are put back exactly as they were, so the
    optimizer's view of what trains never changes. Use under no_grad."""
    flags = [(p, p.requires_grad) for p in inner.parameters()]
    inner.base_model.set_adapter(PREVIOUS, inference_mode=True)
    try:
        yield inner
    finally:
        inner.base_model.set_adapter(TRAINED, inference_mode=True)
        for p, flag in flags:
            p.requires_grad_(flag)
