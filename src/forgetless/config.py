"""Typed, validated, frozen run configuration: YAML file + dotted `key=value` overrides.

Every section is a pydantic model with `extra="forbid"`, so a typo is an error with a
"did you mean" instead of a silently ignored setting. Defaults come from the literature and
the field descriptions cite it; `forgetless train --help-config` prints them.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from forgetless.errors import UserError

_STRICT = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(BaseModel):
    model_config = _STRICT
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


class PeftConfig(BaseModel):
    model_config = _STRICT
    method: Literal["lora"] = Field("lora", description="Parameter-efficient method.")
    r: int = Field(8, ge=1, le=1024, description="LoRA rank; 4-16 limits forgetting (QLoRA paper).")
    alpha: float = Field(16, gt=0, description="LoRA scaling numerator (alpha/r); 2*r is common.")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout (QLoRA: 0.05 for small models).")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="Linear layers to adapt; all-linear = every attention and MLP projection, "
        "which QLoRA found necessary to match full fine-tuning.",
    )


class DataConfig(BaseModel):
    model_config = _STRICT
    train: list[str] = Field(
        default_factory=list,
        description="Training files (.jsonl/.json/.csv/.parquet or a saved HF datasets dir); "
        "'builtin:NAME' names a file shipped in forgetless/assets.",
    )
    validation: list[str] = Field(default_factory=list, description="Validation files (optional).")
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

    @field_validator("train", "validation", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class EarlyStoppingConfig(BaseModel):
    model_config = _STRICT
    enabled: bool = Field(
        False, description="Stop when overfitting is detected and keep the best checkpoint (it always warns)."
    )
    patience: int = Field(
        3, ge=1, description="Validations in a row with rising validation loss while the training loss falls."
    )


class TrainConfig(BaseModel):
    model_config = _STRICT
    lr: float = Field(
        2e-4, gt=0, le=1, description="Peak learning rate: 2e-4 for LoRA (QLoRA 2e-4..5e-4, full FT 1e-5..5e-5)."
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
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    mlflow: bool = Field(
        False, description="At the end, log the run (config, metrics.jsonl, eval, adapter) as an MLflow run."
    )
    mlflow_tracking_uri: str | None = Field(None, description="MLflow URI; default: SQLite under runs/registry.")


class EvalConfig(BaseModel):
    model_config = _STRICT
    before_after: bool = Field(True, description="Score the held-out split before and after training.")
    metric: str = Field(
        "exact_match",
        description="Headline task score: exact_match, rouge1, rouge2, rouge_l, bleu, chrf, accuracy, macro_f1 "
        "(the last two need eval.labels), or the name of a custom metric.",
    )
    labels: list[str] = Field(
        default_factory=list,
        description="Class labels for classification-style answers: enables accuracy and macro-F1, with the "
        "label read from the generated text (the first label it names).",
    )
    custom_metrics: list[str] = Field(
        default_factory=list,
        description="Extra metrics as 'module:function', called with (predictions, references) and returning "
        "a number or a dict of numbers.",
    )
    max_examples: int = Field(60, ge=1, description="Held-out rows scored by generation.")
    max_new_tokens: int = Field(64, ge=1, description="Generation budget per answer.")
    samples: int = Field(3, ge=0, description="Sample answers printed before and after.")
    retention: bool = Field(
        True, description="Measure forgetting after training: KL to the base model and greedy-answer agreement."
    )
    retention_prompts: str = Field(
        "builtin:general/heldout.jsonl",
        description="General prompts that training never sees (any task data format; answers are ignored).",
    )
    retention_max_prompts: int = Field(60, ge=1, description="Held-out general prompts used for retention.")
    retention_max_new_tokens: int = Field(64, ge=1, description="Base-model answer length scored for retention.")
    benchmarks: list[str] = Field(
        ["builtin:general/mc.jsonl"],
        description="Multiple-choice JSONL files scored by log-likelihood on base and fine-tuned model "
        "(format: docs/evaluation.md); the bundled one has 60 general questions in English and Japanese.",
    )
    general_text: list[str] = Field(
        default_factory=list, description="Files of general text whose perplexity is compared (base vs fine-tuned)."
    )
    lm_eval_tasks: list[str] = Field(
        default_factory=list,
        description="lm-evaluation-harness tasks to run too (needs `pip install lm-eval` and its datasets).",
    )
    probe_prompts: int = Field(
        24, ge=0, description="Held-out general prompts in the retention probe run at every validation (0 = off)."
    )
    max_kl: float | None = Field(
        None, gt=0, description="Forgetting budget: the probe's KL to base per token that must not be exceeded."
    )
    on_max_kl: Literal["warn", "stop"] = Field("warn", description="What crossing eval.max_kl does.")
    report: bool = Field(True, description="Write report.md and report.html (with plots) into the run directory.")

    @field_validator("benchmarks", "general_text", "lm_eval_tasks", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _known_metric(self):
        known = ["exact_match", "rouge1", "rouge2", "rouge_l", "bleu", "chrf"]
        known += ["accuracy", "macro_f1"] if self.labels else []
        known += [ref.partition(":")[2] for ref in self.custom_metrics]
        if self.metric not in known:
            raise ValueError(
                f"eval.metric '{self.metric}' is not one of {', '.join(known)} (accuracy and macro_f1 need eval.labels)"
            )
        return self


class LwfConfig(BaseModel):
    model_config = _STRICT
    weight: float = Field(0.5, ge=0, description="λ of the KL term (Learning without Forgetting; 0.5-1.0 recommended).")
    temperature: float = Field(
        1.0, gt=0, description="Softens both distributions before the KL; the term is scaled by T² (Hinton et al.)."
    )
    direction: Literal["finetuned_base", "base_finetuned"] = Field(
        "finetuned_base",
        description="finetuned_base: KL(p_finetuned ‖ p_base), mode-seeking, the product default; "
        "base_finetuned: KL(p_base ‖ p_finetuned), the classic distillation direction.",
    )
    tokens: list[Literal["context", "rehearsal", "answers"]] = Field(
        ["context", "rehearsal"],
        min_length=1,
        description="Where the KL applies: context = the task rows' non-answer tokens (system prompt, "
        "question); rehearsal = every token of the rehearsal rows; answers = the task answers themselves, "
        "which pulls straight against the task loss (see docs/forgetting.md for the measurement).",
    )


class RehearsalConfig(BaseModel):
    model_config = _STRICT
    ratio: float = Field(
        0.3, gt=0, lt=1, description="Share of every batch's rows drawn from general data (0.1-0.3 in the literature)."
    )
    source: list[str] | Literal["self"] = Field(
        "self",
        description="self: the base model's own answers to the bundled general prompts (pseudo-rehearsal); "
        "or files in any task data format with general instruction data.",
    )
    prompts: str = Field(
        "builtin:general/prompts.jsonl", description="Prompts the base model answers when source=self."
    )
    max_new_tokens: int = Field(64, ge=1, description="Answer length the base model generates per prompt.")
    weight: float | None = Field(
        None,
        ge=0,
        description="Weight of the CE on rehearsal answers (a token-mean). Unset: 1 when rehearsal is the only "
        "control, 0 when the LwF KL already covers the rehearsal rows (preset full): CE on the base model's "
        "greedy answers sharpens it towards them and cost task gain and retention (docs/forgetting.md).",
    )

    @field_validator("source", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) and v != "self" else v


class EwcConfig(BaseModel):
    model_config = _STRICT
    weight: float = Field(0.0, ge=0, description="λ_ewc of Σ F·(θ−θ₀)² (Kirkpatrick et al. 2017); 0 turns EWC off.")
    samples: int = Field(64, ge=1, description="General rows used to estimate the diagonal Fisher once per run.")


class ForgettingConfig(BaseModel):
    model_config = _STRICT
    preset: Literal["none", "lwf", "rehearsal", "full"] = Field(
        "full",
        description="none: task loss only; lwf: + KL to the base model; rehearsal: + general data in every "
        "batch; full: both (the configuration the literature recommends).",
    )
    lwf: LwfConfig = LwfConfig()
    rehearsal: RehearsalConfig = RehearsalConfig()
    l2: float = Field(0.0, ge=0, description="Weight of Σ(θ−θ₀)² on the trainable weights; 0.1 is typical, 0 = off.")
    ewc: EwcConfig = EwcConfig()

    @property
    def uses_lwf(self) -> bool:
        return self.preset in ("lwf", "full") and self.lwf.weight > 0

    @property
    def uses_rehearsal(self) -> bool:
        return self.preset in ("rehearsal", "full")

    @property
    def rehearsal_ce_weight(self) -> float:
        return rehearsal_ce_weight(self.preset, self.rehearsal.weight, self.lwf.weight, self.lwf.tokens)


def rehearsal_ce_weight(preset: str, weight: float | None, lwf_weight: float, lwf_tokens: list[str]) -> float:
    """The CE weight on rehearsal rows that `forgetting.rehearsal.weight` (unset = automatic) means."""
    if weight is not None:
        return weight
    distilled = preset == "full" and lwf_weight > 0 and "rehearsal" in lwf_tokens
    return 0.0 if distilled else 1.0


class Config(BaseModel):
    model_config = _STRICT
    output_dir: str = Field("runs/latest", description="Run directory: adapter, config, metrics, report.")
    model: ModelConfig = ModelConfig()
    peft: PeftConfig = PeftConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    forgetting: ForgettingConfig = ForgettingConfig()
    eval: EvalConfig = EvalConfig()


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"override {dotted}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict:
    """`a.b=1 c=x` -> nested dict; values are parsed as YAML scalars (1e-4 and true work)."""
    tree: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"override '{item}' is not key=value (for example train.lr=1e-4)")
        # YAML scalars: 3 -> int, true -> bool; "1e-4" stays a string that pydantic's
        # lax mode turns into a float for float fields.
        value = yaml.safe_load(raw) if raw else ""
        _set_dotted(tree, key, value)
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _yaml_lines(path: Path) -> dict[tuple[str, ...], int]:
    """Map each key path in a YAML file to its 1-based line, for error messages."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: Any, prefix: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = prefix + (str(key_node.value),)
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key)

    walk(yaml.compose(path.read_text(encoding="utf-8")), ())
    return lines


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _section_fields(loc: tuple) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not _is_section(field.annotation):
            return []
        model = field.annotation
    return list(model.model_fields)


def _explain(err: dict, where: dict[tuple[str, ...], int], source: str) -> str:
    loc = tuple(str(p) for p in err["loc"])
    key = ".".join(loc)
    line = where.get(loc)
    place = f"{source}:{line}: " if line else (f"{source}: " if source else "")
    if err["type"] == "extra_forbidden":
        fields = _section_fields(loc)
        # close spelling first, then abbreviations such as rank -> r
        guess = difflib.get_close_matches(loc[-1], fields, n=1) or [f for f in fields if loc[-1].startswith(f)][:1]
        hint = f"; did you mean '{'.'.join(loc[:-1] + (guess[0],))}'?" if guess else ""
        return f"{place}unknown key '{key}'{hint}"
    if err["type"] == "value_error":  # our own cross-field checks already name the key
        return f"{place}{err['msg'].removeprefix('Value error, ')}"
    return f"{place}{key}: {err['msg']} (got {err.get('input')!r})"


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read YAML (optional) and overrides into a frozen Config; raise UserError on bad input."""
    tree: dict = {}
    where: dict[tuple[str, ...], int] = {}
    source = ""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML: {e}".replace("\n", " ")) from None
        if not isinstance(tree, dict):
            raise UserError(f"{path}: the top level must be a mapping of sections (model:, train:, ...)")
        where, source = _yaml_lines(path), str(path)
        tree = _resolve_paths(tree, path.parent)
    return validate(tree, overrides, where, source)


def validate(tree: dict, overrides: list[str] | None = None, where: dict | None = None, source: str = "") -> Config:
    """A Config from nested dicts plus `key=value` overrides; UserError names every bad key."""
    tree = _merge(tree, parse_overrides(overrides or []))
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise UserError("; ".join(_explain(err, where or {}, source) for err in e.errors())) from None


# Keys that hold file paths; in a YAML file they are relative to that file.
PATH_KEYS = [
    ("data", "train"),
    ("data", "validation"),
    ("forgetting", "rehearsal", "source"),
    ("forgetting", "rehearsal", "prompts"),
    ("eval", "retention_prompts"),
    ("eval", "benchmarks"),
    ("eval", "general_text"),
]


def _resolve_paths(tree: dict, base: Path) -> dict:
    """Relative paths in a YAML file are relative to that file, not to the current dir."""
    for keys in PATH_KEYS:
        node = tree
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, dict) or keys[-1] not in node:
            continue
        value = node[keys[-1]]
        fixed = [_rel(p, base) for p in value] if isinstance(value, list) else _rel(value, base)
        tree = _merge(tree, _nest(keys, fixed))
    return tree


def _nest(keys: tuple[str, ...], value: Any) -> dict:
    for k in reversed(keys):
        value = {k: value}
    return value


def _rel(p: Any, base: Path) -> Any:
    if not isinstance(p, str) or p == "self" or p.startswith("builtin:") or Path(p).is_absolute():
        return p
    return str((base / p).resolve())


def dump(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8")


def describe(model: type[BaseModel] = Config, prefix: str = "") -> str:
    """Every key with its default and help text, for `forgetless train --help-config`."""
    out = []
    for name, field in model.model_fields.items():
        if _is_section(field.annotation):
            out.append(describe(field.annotation, f"{prefix}{name}."))
        else:
            default = field.default_factory() if field.default_factory else field.default
            out.append(f"{prefix}{name} = {default!r}\n    {field.description}")
    return "\n".join(out)
