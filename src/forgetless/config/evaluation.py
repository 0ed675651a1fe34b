"""The eval section: what is scored before and after training, and the forgetting budget."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from forgetless.config.fields import STRICT, path_field


class EvalConfig(BaseModel):
    model_config = STRICT
    before_after: bool = Field(True, description="Score the held-out split before and after training.")
    metric: str = Field(
        "exact_match",
        description="Headline task score: exact_match, rouge1, rouge2, rouge_l, bleu, chrf, numeric_match (the "
        "answer's last number equals the reference, when every reference is a number), accuracy, macro_f1 "
        "(the last two need eval.labels), or the name of a custom metric.",
    )
    behaviour_pattern: str | None = Field(
        None,
        description="Preference recipes: a regular expression that a preferred answer matches (e.g. polite "
        "Japanese endings); the share of greedy answers to held-out prompts that match is reported.",
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
    retention_prompts: str = path_field(
        "builtin:general/heldout.jsonl",
        description="General prompts that training never sees (any task data format; answers are ignored).",
    )
    retention_max_prompts: int = Field(60, ge=1, description="Held-out general prompts used for retention.")
    retention_max_new_tokens: int = Field(64, ge=1, description="Base-model answer length scored for retention.")
    benchmarks: list[str] = path_field(
        ["builtin:general/mc.jsonl"],
        description="Multiple-choice JSONL files scored by log-likelihood on base and fine-tuned model "
        "(format: docs/evaluation.md); the bundled one has 60 general questions in English and Japanese.",
    )
    general_text: list[str] = path_field(
        default_factory=list, description="Files of general text whose perplexity is compared (base vs fine-tuned)."
    )
    lm_eval_tasks: list[str] = Field(
        default_factory=list,
        description="lm-evaluation-harness tasks to run too (needs `pip install lm-eval` and its datasets).",
    )
    max_perplexity_rows: int | None = Field(
        None,
        ge=1,
        description="Held-out rows in the task perplexity and the KL to base on task prompts, picked evenly through "
        "the validation split (default: all of them; a cap keeps a large split's evaluation short).",
    )
    max_questions: int | None = Field(
        None,
        ge=1,
        description="Questions scored from each multiple-choice file, picked evenly through it so the bundled "
        "file's English and Japanese both stay (default: all of them).",
    )
    probe_prompts: int = Field(
        24,
        ge=0,
        description="Held-out general prompts in the retention probe run at every validation, picked evenly "
        "through them (0 = off).",
    )
    max_kl: float | None = Field(
        None, gt=0, description="Forgetting budget: the probe's KL to base per token that must not be exceeded."
    )
    on_max_kl: Literal["warn", "stop"] = Field("warn", description="What crossing eval.max_kl does.")
    report: bool = Field(True, description="Write report.md and report.html (with plots) into the run directory.")

    # Settings added after base-side scores were first shipped (assets/generated/): a cache key holds them
    # only when they are set, so the scores computed under the defaults stay valid.
    KEY_WHEN_SET: ClassVar[tuple[str, ...]] = ("max_perplexity_rows", "max_questions")

    def key_fields(self) -> dict:
        """These settings as the caches of base-side scores read them (eval/base_cache.py, runtime.eval_settings)."""
        dumped = self.model_dump(mode="json")
        return {k: v for k, v in dumped.items() if not (k in self.KEY_WHEN_SET and v is None)}

    @field_validator("benchmarks", "general_text", "lm_eval_tasks", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _known_metric(self):
        known = ["exact_match", "rouge1", "rouge2", "rouge_l", "bleu", "chrf", "numeric_match"]
        known += ["accuracy", "macro_f1"] if self.labels else []
        known += [ref.partition(":")[2] for ref in self.custom_metrics]
        if self.metric not in known:
            raise ValueError(
                f"eval.metric '{self.metric}' is not one of {', '.join(known)} (accuracy and macro_f1 need eval.labels)"
            )
        return self
