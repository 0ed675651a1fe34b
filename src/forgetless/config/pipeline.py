"""The pipeline file (`forgetless pipeline pipeline.yaml`): its stages' settings and the registry's
promotion gates, validated like a training config (unknown keys are errors naming file and line).
What runs the stages is forgetless/pipeline.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from forgetless.config.fields import EXPORT_FORMATS
from forgetless.errors import UserError
from forgetless.files import read_yaml


class Gates(BaseModel):
    """What a version must show before it may take an alias (e.g. production)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min_task: dict[str, float] = Field(
        default_factory=dict, description="Lowest acceptable fine-tuned task scores, e.g. {exact_match: 0.6}."
    )
    max_kl: float | None = Field(None, ge=0, description="Highest acceptable KL to the base per token.")
    max_benchmark_drop: float | None = Field(
        None, ge=0, description="Largest acceptable drop of any retention benchmark's accuracy (base − fine-tuned)."
    )
    budget_met: bool = Field(
        False, description="The run met the forgetting budget it was trained under (a run without one fails)."
    )


def gates(
    tree: dict,
    min_task: list[str] = (),
    max_kl: float | None = None,
    max_drop: float | None = None,
    budget_met: bool = False,
) -> Gates:
    """Gates from a YAML tree (--gates FILE) with `METRIC=VALUE` minimums and limits on top (CLI and UI)."""
    tree = dict(tree)
    for item in min_task:
        name, _, value = item.partition("=")
        try:
            tree.setdefault("min_task", {})[name.strip()] = float(value)  # no '=': float('') fails too
        except ValueError:
            raise UserError(f"--min-task {item}: write METRIC=VALUE, e.g. exact_match=0.6") from None
    if max_kl is not None:
        tree["max_kl"] = max_kl
    if max_drop is not None:
        tree["max_benchmark_drop"] = max_drop
    if budget_met:
        tree["budget_met"] = True
    try:
        return Gates(**tree)
    except Exception as e:  # pydantic's message names the key
        raise UserError(f"gates: {str(e).splitlines()[0]} ({' '.join(str(e).split())[:200]})") from None


_STRICT = ConfigDict(extra="forbid", frozen=True)


class RegistryStage(BaseModel):
    model_config = _STRICT
    name: str = Field(description="Registered model name.")
    tracking_uri: str | None = Field(None, description="MLflow URI; default: SQLite under runs/registry.")


class ServeStage(BaseModel):
    model_config = _STRICT
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    adapters: dict[str, str] = Field(default_factory=dict, description="Other adapters to serve beside this one.")


class ExportStage(BaseModel):
    model_config = _STRICT
    format: Literal[tuple(EXPORT_FORMATS)] = Field("gguf", description="`forgetless export --format`.")
    quant: str = Field("q8_0", description="`forgetless export --quant` (gguf and ollama).")


class DataCheckStage(BaseModel):
    model_config = _STRICT
    against: list[str] = Field(
        default_factory=list, description="Held-out files to look for in training (data.validation is always included)."
    )
    near: float = Field(0.85, gt=0, le=1, description="Character 5-gram Jaccard of a near duplicate.")
    strict: bool = Field(False, description="A warning of `forgetless data check` stops the pipeline.")


class AugmentStep(BaseModel):
    model_config = _STRICT
    method: str = Field(description="paraphrase | backtranslate | synonyms.")
    n: int = Field(2, ge=1, description="Variants tried per row.")
    model: str | None = Field(None, description="The rewriting model; default: the run's base model.")
    seed: int = 0
    answers: bool = Field(False, description="Rewrite the expected answers too.")


class DataPrep(BaseModel):
    model_config = _STRICT
    dedup: bool = Field(False, description="Drop exact and near duplicates (at data_check.near).")
    decontaminate: bool = Field(False, description="Drop training rows found in data.validation or data_check.against.")
    augment: AugmentStep | None = Field(None, description="`forgetless data augment` on the cleaned rows.")

    def any(self) -> bool:
        return self.dedup or self.decontaminate or self.augment is not None


class PipelineConfig(BaseModel):
    model_config = _STRICT
    train: str = Field(description="Training config file (path relative to this pipeline file).")
    overrides: list[str] = Field(default_factory=list)
    output_dir: str | None = None
    registry: RegistryStage
    gates: Gates = Gates()
    alias: str = "production"
    serve: ServeStage = ServeStage()
    data_check: DataCheckStage = DataCheckStage()
    data_prep: DataPrep = DataPrep()
    export: ExportStage | None = Field(
        None, description="Export the trained model for llama.cpp/Ollama to OUTPUT_DIR/export before registering it."
    )


STAGES = ["data", "train", "evaluate", "export", "register", "promote", "serve"]


def load(path: Path) -> PipelineConfig:
    if not Path(path).is_file():
        raise UserError(f"{path}: no such pipeline file")
    tree, lines = read_yaml(Path(path))
    try:
        cfg = PipelineConfig(**(tree or {}))
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(str(x) for x in err["loc"])
        where = f"{path}:{lines[loc[:1]]}" if loc[:1] in lines else str(path)
        raise UserError(f"{where}: {'.'.join(loc)}: {err['msg']}") from None
    train = Path(cfg.train)
    if not train.is_absolute() and not train.exists():
        train = Path(path).parent / train
    return cfg.model_copy(update={"train": str(train)})
