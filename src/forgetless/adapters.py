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

import json
from contextlib import contextmanager
from pathlib import Path

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
from safetensors.torch import load_file, save_file

from forgetless import bottleneck, selective
from forgetless.config import PeftConfig
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


def peft_config(cfg: PeftConfig, model_path: str | None = None, task_type: str = "CAUSAL_LM"):
    """PEFT's config object for the PEFT-provided methods. task_type SEQ_CLS (reward models) also
    trains and saves the score head (PEFT adds it to modules_to_save)."""
    if cfg.method in ("lora", "dora"):
        return LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=cfg.target_modules,
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
    ckpt_kwargs = {"use_reentrant": False}
    if quantized:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=grad_checkpointing, gradient_checkpointing_kwargs=ckpt_kwargs
        )
    elif grad_checkpointing:
        enable_grad_checkpointing(model)
    if cfg.method in PEFT_METHODS:
        return get_peft_model(model, peft_config(cfg, model_path, task_type))
    if cfg.method == "adapter":
        return bottleneck.attach(model, cfg.adapter_size, cfg.adapter_placement, cfg.adapter_activation)
    return selective.attach(model, cfg.method, cfg.layers, cfg.parts)


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def apply_liger(model, dev: torch.device) -> None:
    """`train.liger`: swap RMSNorm, RoPE and the SwiGLU MLP for Liger's fused Triton kernels. The loss
    kernels stay off: forgetless computes its losses on selected positions itself (`outputs`)."""
    if dev.type != "cuda":
        raise UserError("train.liger needs a CUDA GPU (Liger's kernels are written in Triton); set train.liger=false")
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        raise UserError("train.liger needs liger-kernel: pip install liger-kernel") from None
    _apply_liger_kernel_to_instance(model=model, cross_entropy=False, fused_linear_cross_entropy=False)


def logits_of(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids=None) -> torch.Tensor:
    """(B, T, V) next-token logits aligned with input_ids. Prompt tuning prepends its virtual tokens
    to the sequence and returns their positions too: only the last T positions are the input's.
    Packed batches (`data.packing`) pass position ids instead of the attention mask."""
    # Packed rows need no KV cache: with one, transformers would not read the rows from the position ids.
    where = {"attention_mask": attention_mask}
    if position_ids is not None:
        where = {"position_ids": position_ids, "use_cache": False}
    out = model(input_ids=input_ids, **where).logits
    return out[:, -input_ids.shape[1] :]


@contextmanager
def base_view(model):
    """The base model from the same weights (the LwF teacher, the retention and DPO reference).

    No second copy of the model exists: PEFT routes the forward pass around its adapter layers,
    our bottleneck adapters pass their input through, and bitfit/selective/full swap their
    trained tensors back to the initial values for the duration. `model` may be wrapped by
    accelerate/DDP. Use under no_grad.
    """
    inner = extract_model_from_parallel(model)
    if hasattr(inner, "disable_adapter"):
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


def method_of(directory: Path) -> str:
    """The method a saved result was trained with: PEFT's peft_type, or our own format's method."""
    directory = Path(directory)
    if (directory / OWN_FORMAT).is_file():
        return json.loads((directory / OWN_FORMAT).read_text(encoding="utf-8"))["method"]
    cfg = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
    kinds = {"LORA": "dora" if cfg.get("use_dora") else "lora", "PREFIX_TUNING": "prefix", "PROMPT_TUNING": "prompt"}
    return kinds.get(cfg["peft_type"], cfg["peft_type"].lower())


def save(model, directory: Path, cfg: PeftConfig, base_model: str) -> None:
    """Write the trained result: PEFT's format, a whole model (full), or our own layout."""
    directory = Path(directory)
    inner = extract_model_from_parallel(model)
    if cfg.method in PEFT_METHODS:
        inner.save_pretrained(directory)
        return
    directory.mkdir(parents=True, exist_ok=True)
    if cfg.method == "full":
        inner.save_pretrained(directory)  # loads with AutoModelForCausalLM.from_pretrained
    else:
        trained = {n: p.detach().cpu().contiguous() for n, p in inner.named_parameters() if p.requires_grad}
        save_file(trained, str(directory / TRAINED))
    settings = {k: v for k, v in cfg.model_dump().items() if k == "method" or k in _own_settings(cfg.method)}
    facts = {"method": cfg.method, "base_model_name_or_path": base_model, "settings": settings, "format": 1}
    (directory / OWN_FORMAT).write_text(json.dumps(facts, indent=2), encoding="utf-8")


def _own_settings(method: str) -> set[str]:
    from forgetless.sections import METHOD_FIELDS

    return {k for k, users in METHOD_FIELDS.items() if method in users}


def load(model, directory: Path, adapter_name: str = "default"):
    """The base `model` with a saved result applied (PEFT model for PEFT methods), for inference."""
    directory = Path(directory)
    if not (directory / OWN_FORMAT).is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(directory), adapter_name=adapter_name)
    facts = json.loads((directory / OWN_FORMAT).read_text(encoding="utf-8"))
    method, settings = facts["method"], facts["settings"]
    if method == "adapter":
        size, placement = settings["adapter_size"], settings["adapter_placement"]
        bottleneck.attach(model, size, placement, settings["adapter_activation"])
    weights = _saved_weights(directory, method)
    if method != "adapter":  # keep the base's values of the loaded tensors: base_view swaps them back
        own = dict(model.named_parameters())
        setattr(model, selective.INITIAL, [(own[n], own[n].detach().clone()) for n in weights if n in own])
    _copy_in(model, weights, directory)
    return model.requires_grad_(False)


def _copy_in(model, weights: dict[str, torch.Tensor], directory: Path) -> None:
    own = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(own))
    if unknown:
        raise UserError(
            f"{directory}: {len(unknown)} saved tensors (e.g. {unknown[0]}) do not exist in this base model"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            own[name].copy_(tensor.to(own[name].dtype))


def _saved_weights(directory: Path, method: str) -> dict[str, torch.Tensor]:
    if method != "full":
        return load_file(str(directory / TRAINED))
    weights: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        weights |= load_file(str(f))
    if not weights:
        raise UserError(f"{directory}: no *.safetensors weights in this full fine-tuning result")
    return weights


def restore(model, directory: Path) -> None:
    """Put the trainable weights saved by `save` (e.g. the best checkpoint) back into a training model."""
    directory = Path(directory)
    inner = extract_model_from_parallel(model)
    if (directory / OWN_FORMAT).is_file():
        _copy_in(inner, _saved_weights(directory, method_of(directory)), directory)
        return
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(inner, load_file(str(directory / "adapter_model.safetensors")))


def load_several(model, dirs: dict[str, Path]):
    """The base with several named results side by side (chat and serve switch between them).

    PEFT keeps several adapters of one method in one model and switches with `set_adapter`; our
    own formats (adapter, bitfit, selective, full) change the model itself, so they load alone.
    """
    names = list(dirs)
    methods = {name: method_of(d) for name, d in dirs.items()}
    kinds = set(methods.values())
    if len(names) > 1 and (len(kinds) > 1 or not kinds <= PEFT_METHODS):
        found = ", ".join(f"{n}={m}" for n, m in methods.items())
        raise UserError(
            f"several results side by side must be PEFT adapters of one method (lora, dora, ia3, prefix or "
            f"prompt); got {found}: load the others one at a time"
        )
    model = load(model, dirs[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(dirs[name]), adapter_name=name)
    return model


def activate(model, name: str) -> None:
    """Route generation through the named result (PEFT models hold several)."""
    if hasattr(model, "set_adapter"):
        model.set_adapter(name)
