"""The config sections: one pydantic model per concern, defaults from the literature.

Every section forbids unknown keys and is frozen; `config/loader.py` loads YAML and overrides into
`Config`. Field descriptions are the help text `forgetless train --help-config` prints.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from forgetless.config.evaluation import EvalConfig
from forgetless.config.fields import STRICT, path_field
from forgetless.config.forgetting import (  # noqa: F401  (one place to import every section from)
    EwcConfig,
    ForgettingConfig,
    LwfConfig,
    RehearsalConfig,
    kl_tokens_of,
    rehearsal_ce_weight,
)
from forgetless.config.preference import DpoConfig, GrpoConfig, RlhfConfig


class ModelConfig(BaseModel):
    model_config = STRICT
    name: str = Field(
        "smollm2-135m-instruct",
        description="Alias (smollm2-135m-instruct), local HF directory, hub id, or a .gguf file.",
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="auto: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU."
    )
    quantization: Literal["none", "4bit", "8bit"] = Field(
        "none",
        description="4bit: frozen NF4 base with double quantization (QLoRA, Dettmers et al. 2023); "
        "8bit: LLM.int8 (Dettmers et al. 2022). Both via bitsandbytes, CPU included.",
    )
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto",
        description="Attention kernel: auto = FlashAttention-2 on a CUDA GPU when flash-attn is installed, "
        "else PyTorch SDPA (which picks its own flash/memory-efficient kernel).",
    )
    continue_from: str | None = path_field(
        None,
        description="A finished run whose LoRA/DoRA adapter this run continues (task after task; CLI "
        "--continue-from RUN). That run's model is the LwF teacher, the retention reference and the 'before' "
        "side; the result is still one adapter over the original base. recipe sft only.",
    )


METHODS = ("lora", "dora", "prefix", "prompt", "ia3", "adapter", "bitfit", "selective", "full")
# The peak learning rate each method's literature uses with AdamW (train.lr unset picks it).
DEFAULT_LR = {
    "lora": 2e-4,  # QLoRA (Dettmers et al. 2023)
    "dora": 2e-4,  # DoRA (Liu et al. 2024) keeps LoRA's rate
    "prefix": 5e-3,  # prefix tuning trains only the prefix: rates 1e-3..1e-2 (PEFT's examples)
    "prompt": 3e-2,  # soft prompts need large rates (Lester et al. 2021 used 0.3 with Adafactor)
    "ia3": 3e-3,  # T-Few (Liu et al. 2022)
    "adapter": 1e-3,  # Houlsby et al. 2019 swept 1e-4..1e-3
    "bitfit": 1e-3,  # Ben Zaken et al. 2022 swept 1e-4..1e-3
    "selective": 5e-5,  # whole weight matrices of a few blocks: near full fine-tuning's rates
    "full": 2e-5,  # full fine-tuning 1e-5..5e-5; higher rates forget faster
}
# Which settings belong to which method: changing one that the chosen method ignores is an error.
METHOD_FIELDS = {
    "r": {"lora", "dora"},
    "alpha": {"lora", "dora"},
    "dropout": {"lora", "dora"},
    "target_modules": {"lora", "dora"},
    "virtual_tokens": {"prefix", "prompt"},
    "prompt_init": {"prompt"},
    "prompt_init_text": {"prompt"},
    "prefix_projection": {"prefix"},
    "ia3_target_modules": {"ia3"},
    "ia3_feedforward_modules": {"ia3"},
    "adapter_size": {"adapter"},
    "adapter_placement": {"adapter"},
    "adapter_activation": {"adapter"},
    "layers": {"selective"},
    "parts": {"selective"},
}


class PeftConfig(BaseModel):
    model_config = STRICT
    method: Literal[METHODS] = Field(
        "lora",
        description="lora | dora | prefix | prompt | ia3 | adapter | bitfit | selective | full. LoRA for light "
        "tuning (with model.quantization=4bit: QLoRA), adapters for several tasks, IA3 when inference speed "
        "matters, prefix for strengthening prompts, full when maximum adaptation is worth its cost and forgetting.",
    )
    r: int = Field(8, ge=1, le=1024, description="LoRA/DoRA rank; 4-16 limits forgetting (QLoRA paper).")
    alpha: float = Field(16, gt=0, description="LoRA/DoRA scaling numerator (alpha/r); 2*r is common.")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA/DoRA dropout (QLoRA: 0.05 for small models).")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="LoRA/DoRA: linear layers to adapt; all-linear = every attention and MLP projection, "
        "which QLoRA found necessary to match full fine-tuning.",
    )
    virtual_tokens: int = Field(
        20, ge=1, le=512, description="prefix/prompt: virtual tokens (Lester et al. 2021: 20-100; Li & Liang: 10-200)."
    )
    prompt_init: Literal["random", "text"] = Field(
        "random", description="prompt: start the soft prompt randomly or from the embeddings of prompt_init_text."
    )
    prompt_init_text: str | None = Field(
        None, description="prompt: the text whose token embeddings initialise the soft prompt (prompt_init=text)."
    )
    prefix_projection: bool = Field(
        False, description="prefix: reparametrise the prefix through an MLP (Li & Liang 2021; more parameters)."
    )
    ia3_target_modules: list[str] = Field(
        ["k_proj", "v_proj", "down_proj"],
        description="IA3: modules whose activations get a learned scale: keys, values and the MLP (Liu et al. 2022).",
    )
    ia3_feedforward_modules: list[str] = Field(
        ["down_proj"], description="IA3: which of ia3_target_modules are MLP layers (scaled on their input)."
    )
    adapter_size: int = Field(
        64, ge=1, description="adapter: bottleneck width of each Houlsby adapter (Houlsby et al. 2019: 8-256)."
    )
    adapter_placement: list[Literal["attention", "mlp"]] = Field(
        ["attention", "mlp"], description="adapter: insert after the attention block, the MLP block, or both (Houlsby)."
    )
    adapter_activation: Literal["gelu", "relu", "silu"] = Field("gelu", description="adapter: the nonlinearity.")
    layers: int | list[int] = Field(
        2,
        description="selective: the top N transformer blocks (an int), or a list of block indices (0 = first).",
    )
    parts: list[Literal["attention", "mlp", "norm", "embeddings", "head"]] = Field(
        ["attention", "mlp", "norm"],
        description="selective: which parameter kinds of the chosen blocks train; embeddings and head are "
        "model-wide (with tied embeddings they are one tensor).",
    )

    @model_validator(mode="after")
    def _settings_match_method(self) -> PeftConfig:
        # A value equal to the default is allowed, so a LoRA config can switch method by one override.
        for name in sorted(self.model_fields_set):
            changed = getattr(self, name) != type(self).model_fields[name].default
            if name in METHOD_FIELDS and self.method not in METHOD_FIELDS[name] and changed:
                users = "/".join(sorted(METHOD_FIELDS[name]))
                raise ValueError(f"peft.{name} is a {users} setting; peft.method is {self.method}: remove it")
        if self.prompt_init == "text" and not self.prompt_init_text:
            raise ValueError("peft.prompt_init=text needs peft.prompt_init_text (the text to start from)")
        if not set(self.ia3_feedforward_modules) <= set(self.ia3_target_modules):
            raise ValueError("peft.ia3_feedforward_modules must be a subset of peft.ia3_target_modules")
        return self


class DataConfig(BaseModel):
    model_config = STRICT
    train: list[str] = path_field(
        default_factory=list,
        description="Training files (.jsonl/.json/.csv/.parquet or a saved HF datasets dir); "
        "'builtin:NAME' names a file shipped in forgetless/assets.",
    )
    validation: list[str] = path_field(default_factory=list, description="Validation files (optional).")
    validation_split: float = Field(
        0.1, ge=0, lt=1, description="Share of train rows held out when no validation file is given."
    )
    format: Literal["auto", "instruction", "pair", "chat", "text"] = Field(
        "auto", description="Row format; auto detects it per file from the first row's keys."
    )
    max_length: int = Field(1024, ge=8, description="Maximum tokens per rendered row.")
    overlong: Literal["truncate", "drop"] = Field(
        "truncate", description="What to do with rows longer than max_length (counted and reported)."
    )
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="raise: stop at the first bad row; skip: skip it and report the count."
    )
    loss_on: Literal["assistant", "all"] = Field(
        "assistant", description="Tokens that carry the loss: every assistant turn, or everything."
    )
    system_prompt: str | None = Field(
        None, description="System message added to rows that have none (else the template default)."
    )
    chat_template: str | None = path_field(
        None,
        description="Chat template to render rows with instead of the tokenizer's own (a base model has none): "
        "chatml, qwen (= chatml), llama3, gemma, mistral, or a .jinja file. Saved with the adapter's tokenizer, "
        "so chat, serve, merge and eval use the same one.",
    )
    packing: Literal["auto", True, False] = Field(
        "auto",
        description="Training batches without padding: a micro-batch's rows packed into sequences of up to "
        "max_length tokens, attention kept inside each row (auto: on, except for prompt/prefix tuning, whose "
        "virtual tokens assume one row per sequence).",
    )
    group_by_length: bool = Field(
        False, description="Micro-batches of rows of similar length (less padding when packing is off)."
    )

    @field_validator("train", "validation", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class EarlyStoppingConfig(BaseModel):
    model_config = STRICT
    enabled: bool = Field(
        False, description="Stop when overfitting is detected and keep the best checkpoint (it always warns)."
    )
    patience: int = Field(
        3, ge=1, description="Validations in a row with rising validation loss while the training loss falls."
    )


class TrainConfig(BaseModel):
    model_config = STRICT
    lr: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Peak learning rate; unset: the method's literature rate (LoRA 2e-4, IA3 3e-3, adapter/BitFit "
        "1e-3, prefix 5e-3, prompt 3e-2, selective 5e-5, full 2e-5).",
    )
    epochs: float = Field(3, gt=0, description="Passes over the task data (3 is the common SFT default).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs when set.")
    batch_size: int = Field(4, ge=1, description="Rows per micro-batch.")
    grad_accum: int = Field(4, ge=1, description="Micro-batches per optimizer step (effective batch 16).")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps with linear warm-up (0.03).")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="LR schedule after warm-up.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (0.01).")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm (1.0).")
    grad_checkpointing: Literal["auto", True, False] = Field(
        "auto", description="auto: on when training on a GPU, off on CPU (where it only costs time)."
    )
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = Field(
        "adamw", description="adamw (torch); adamw_8bit / paged_adamw_8bit from bitsandbytes (GPU)."
    )
    loss_chunk: int = Field(
        1024,
        ge=1,
        description="Positions whose vocabulary-wide logits are made at once by the loss (the output head runs "
        "only where a loss term counts, a chunk at a time, recomputed in backward when there are several).",
    )
    liger: bool = Field(
        False, description="Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU) on a CUDA GPU; needs liger-kernel."
    )
    on_oom: Literal["retry", "stop"] = Field(
        "retry",
        description="On a GPU out-of-memory error: retry halves the micro-batch (same effective batch), then turns "
        "on gradient checkpointing, then stops with the planner's advice; stop: stop with the advice at once.",
    )
    seed: int = Field(42, description="Seed for data order, dropout and initialisation.")
    log_every: int = Field(1, ge=1, description="Optimizer steps between metrics.jsonl lines.")
    eval_every: int = Field(50, ge=1, description="Optimizer steps between validation passes.")
    save_every: int = Field(50, ge=1, description="Optimizer steps between checkpoints.")
    keep_checkpoints: int = Field(2, ge=1, description="Most recent checkpoints kept on disk.")
    profile_steps: int = Field(
        0,
        ge=0,
        description="Profile this many optimizer steps after the first with torch.profiler: "
        "output_dir/profile/regions.md (time per step of forward, loss terms, teacher forward, backward, "
        "optimizer; the busiest operators) and trace.json (the timeline, for ui.perfetto.dev). 0: off.",
    )
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    mlflow: bool = Field(
        False, description="At the end, log the run (config, metrics.jsonl, eval, adapter) as an MLflow run."
    )
    mlflow_tracking_uri: str | None = Field(None, description="MLflow URI; default: SQLite under runs/registry.")


class Config(BaseModel):
    model_config = STRICT
    recipe: Literal["sft", "dpo", "reward", "rlhf", "grpo"] = Field(
        "sft",
        description="sft: instruction tuning; dpo: preference tuning without a reward model; reward: a reward "
        "model from preference pairs; rlhf: PPO against a reward model; grpo: RL with verifiable rewards "
        "(group-relative advantages, no value model). DPO improves or stabilises existing behaviour; RLHF "
        "and GRPO teach a new behaviour policy.",
    )
    output_dir: str = Field("runs/latest", description="Run directory: adapter, config, metrics, report.")
    model: ModelConfig = ModelConfig()
    peft: PeftConfig = PeftConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    forgetting: ForgettingConfig = ForgettingConfig()
    eval: EvalConfig = EvalConfig()
    dpo: DpoConfig = DpoConfig()
    rlhf: RlhfConfig = RlhfConfig()
    grpo: GrpoConfig = GrpoConfig()

    @property
    def lr(self) -> float:
        """The peak learning rate: train.lr, or the method's literature rate when unset. Resolved here,
        from the final peft.method, so that a Config reused with another method gets that method's rate
        (full fine-tuning needs a far lower one than LoRA)."""
        return self.train.lr if self.train.lr is not None else DEFAULT_LR[self.peft.method]

    @model_validator(mode="after")
    def _budget_measurable(self) -> Config:
        b, e = self.forgetting.budget, self.eval
        if not b.set:
            return self
        if self.recipe != "sft":
            raise ValueError(f"forgetting.budget is steered by recipe sft; this config has recipe {self.recipe}")
        if not e.retention or (b.mc_drop is not None and not e.benchmarks):
            need = "eval.retention=true" + (" and eval.benchmarks (multiple choice)" if b.mc_drop is not None else "")
            raise ValueError(f"forgetting.budget is measured on the retention evaluation: it needs {need}")
        return self

    @model_validator(mode="after")
    def _method_fits_model(self) -> Config:
        method, quant = self.peft.method, self.model.quantization
        if quant != "none" and method == "full":
            raise ValueError(
                f"peft.method=full cannot train a {quant} base (quantized weights have no gradients); "
                "use model.quantization=none, or peft.method=lora with the quantized base (QLoRA)"
            )
        if self.recipe in ("reward", "rlhf", "grpo") and method not in ("lora", "dora"):
            raise ValueError(
                f"recipe {self.recipe} trains LoRA or DoRA adapters (a score or value head, or the "
                f"reference as the adapter switched off); peft.method is {method}: use peft.method=lora"
            )
        if self.model.continue_from and (self.recipe != "sft" or method not in ("lora", "dora")):
            raise ValueError(
                "model.continue_from continues an earlier run's LoRA/DoRA adapter with recipe sft; "
                f"this config has recipe {self.recipe}, peft.method {method}"
            )
        if self.recipe == "grpo" and self.forgetting.preset == "lwf":
            raise ValueError(
                "recipe grpo: its KL to the base on the task's prompts is grpo.kl_coef; forgetting.preset lwf "
                "adds no general rows to keep: use rehearsal or full (general rows beside every micro-batch)"
            )
        if self.recipe == "rlhf" and not self.rlhf.reward_model:
            raise ValueError("recipe rlhf needs rlhf.reward_model: the run directory of a `recipe: reward` run")
        if self.data.packing is True and method in ("prompt", "prefix"):
            raise ValueError(
                f"data.packing=true does not work with peft.method={method} (its virtual tokens assume one row "
                "per sequence); use data.packing=auto or false"
            )
        if quant != "none" and method == "selective" and {"attention", "mlp"} & set(self.peft.parts):
            raise ValueError(
                f"peft.method=selective cannot train the attention/MLP weights of a {quant} base; "
                "use peft.parts=[norm] (or embeddings/head), or model.quantization=none"
            )
        return self
