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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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
    seed: int = Field(42, description="Seed for data order, dropout and initialisation.")
    log_every: int = Field(1, ge=1, description="Optimizer steps between metrics.jsonl lines.")
    eval_every: int = Field(50, ge=1, description="Optimizer steps between validation passes.")
    save_every: int = Field(50, ge=1, description="Optimizer steps between checkpoints.")
    keep_checkpoints: int = Field(2, ge=1, description="Most recent checkpoints kept on disk.")


class EvalConfig(BaseModel):
    model_config = _STRICT
    before_after: bool = Field(True, description="Score the held-out split before and after training.")
    metric: Literal["exact_match", "rouge_l"] = Field("exact_match", description="Task score shown.")
    max_examples: int = Field(60, ge=1, description="Held-out rows scored by generation.")
    max_new_tokens: int = Field(64, ge=1, description="Generation budget per answer.")
    samples: int = Field(3, ge=0, description="Sample answers printed before and after.")


class Config(BaseModel):
    model_config = _STRICT
    output_dir: str = Field("runs/latest", description="Run directory: adapter, config, metrics, report.")
    model: ModelConfig = ModelConfig()
    peft: PeftConfig = PeftConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
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


def _section_fields(loc: tuple) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
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


def _resolve_paths(tree: dict, base: Path) -> dict:
    """Relative data paths in a YAML file are relative to that file, not to the current dir."""
    data = tree.get("data")
    if not isinstance(data, dict):
        return tree
    fixed = dict(data)
    for key in ("train", "validation"):
        value = data.get(key)
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list):
            fixed[key] = [_rel(p, base) for p in items]
    return {**tree, "data": fixed}


def _rel(p: Any, base: Path) -> Any:
    if not isinstance(p, str) or p.startswith("builtin:") or Path(p).is_absolute():
        return p
    return str((base / p).resolve())


def dump(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8")


def describe() -> str:
    """Every key with its default and help text, for `forgetless train --help-config`."""
    out = []
    for name, field in Config.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            for sub, f in field.annotation.model_fields.items():
                default = f.default_factory() if f.default_factory else f.default
                out.append(f"{name}.{sub} = {default!r}\n    {f.description}")
        else:
            out.append(f"{name} = {field.default!r}\n    {field.description}")
    return "\n".join(out)
