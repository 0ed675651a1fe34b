"""The forgetting section: LwF, rehearsal, L2 and EWC, and the presets that combine them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from forgetless.config.fields import OWN_ANSWERS, STRICT, path_field


class OnPolicyConfig(BaseModel):
    model_config = STRICT
    every: int = Field(10, ge=1, description="Optimizer steps between the current model's answers to general prompts.")
    prompts: int = Field(8, ge=1, description="General prompts the current model answers each time.")
    max_new_tokens: int = Field(64, ge=1, description="Answer length of the current model's answers.")
    max_kl: float = Field(
        0.05,
        gt=0,
        description="Filter: an answer is replayed in the next micro-batches' rehearsal share and replaces its "
        "prompt's rehearsal row when its KL to the reference (the model with the adapter off) is at most this per "
        "token; the others are dropped (recorded, not replayed).",
    )


class LwfConfig(BaseModel):
    model_config = STRICT
    weight: float = Field(0.5, ge=0, description="λ of the KL term (Learning without Forgetting; 0.5-1.0 recommended).")
    temperature: float = Field(
        1.0, gt=0, description="Softens both distributions before the KL; the term is scaled by T² (Hinton et al.)."
    )
    direction: Literal["finetuned_base", "base_finetuned"] = Field(
        "finetuned_base",
        description="finetuned_base: KL(p_finetuned ‖ p_base), mode-seeking, the product default; "
        "base_finetuned: KL(p_base ‖ p_finetuned), the classic distillation direction.",
    )
    tokens: list[Literal["context", "rehearsal", "answers"]] | None = Field(
        None,
        min_length=1,
        description="Where the KL applies: context = the task rows' non-answer tokens (system prompt, "
        "question); rehearsal = every token of the rehearsal rows; answers = the task answers themselves, "
        "which pulls straight against the task loss (see docs/forgetting.md for the measurement). Unset: "
        "[context, rehearsal], or [rehearsal] only under a forgetting.budget.kl (chosen on validation rows, "
        "docs/forgetting.md).",
    )
    positions: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Share of the KL positions that count in each micro-batch, drawn at random (seeded by the "
        "batch's tokens) and scaled up by 1/share: an unbiased estimate of the full term that runs the output "
        "head and softmaxes on fewer positions (the teacher's forward pass is unchanged); 1 = every position.",
    )
    teacher: Literal["auto", "online", "cached"] = Field(
        "auto",
        description="online: the base model's forward pass on every batch (exact KL); cached: its top-k "
        "log-probabilities per training row, computed once before training and saved with the run "
        "(no teacher pass per step; accuracy and disk cost in docs/performance.md); auto: cached when the "
        "run sees its rows more than once (the cache then costs less than the passes it replaces), else online.",
    )
    top_k: int = Field(32, ge=1, description="Tokens per position kept by the cached teacher (plus the tail mass).")
    teacher_precision: Literal["model", "bf16", "auto"] = Field(
        "model",
        description="The online teacher's forward pass: model = in the model's own dtype (exact, the same on every "
        "machine); bf16 = under bfloat16 autocast, its hidden states handed back in the model's dtype (about 1.8x "
        "faster on CPUs with AVX-512 BF16 or AMX, slower on AVX2-only ones; a KL floor of ~6e-4 per token, "
        "docs/forgetting.md); auto = bf16 for an fp32 model on such a CPU, else model.",
    )


class RehearsalConfig(BaseModel):
    model_config = STRICT
    ratio: float = Field(
        0.3,
        gt=0,
        lt=1,
        description="Share of every batch's rows drawn from general data (0.1-0.3 in the literature), rounded to "
        "whole rows per micro-batch; a share under one row per micro-batch is spread over the batches exactly.",
    )
    source: list[str] | Literal["self", "on_policy"] = path_field(
        "self",
        description="self: the base model's own answers to the bundled general prompts (pseudo-rehearsal); "
        "on_policy: those answers at first, then the current model's own answers every on_policy.every steps, "
        "kept when they stay within on_policy.max_kl of the reference (On-Policy Replay), replayed with CE; "
        "or a list of files in any task data format with general instruction data, of earlier run "
        "directories (their training rows: task after task), and of `self` or `on_policy`.",
    )
    prompts: str = path_field(
        "builtin:general/prompts.jsonl", description="Prompts the base model answers when source=self."
    )
    max_new_tokens: int = Field(64, ge=1, description="Answer length the base model generates per prompt.")
    on_policy: OnPolicyConfig = OnPolicyConfig()
    weight: float | None = Field(
        None,
        ge=0,
        description="Weight of the CE on rehearsal answers (a token-mean). Unset: 1 when rehearsal is the only "
        "control, 0 on the base model's own answers when the LwF KL already covers the rehearsal rows (preset "
        "full): CE on its greedy answers sharpens it towards them and cost task gain and retention "
        "(docs/forgetting.md). Earlier runs' training rows (an earlier task's real answers, which the KL to the "
        "base does not teach) are replayed with CE 1.",
    )

    @property
    def sources(self) -> list[str]:
        return [self.source] if isinstance(self.source, str) else self.source

    @property
    def on_policy_replay(self) -> bool:
        return "on_policy" in self.sources

    @property
    def replays(self) -> bool:
        """Whether rows are replayed with CE: earlier runs' training rows (task after task), or on-policy
        answers."""
        return self.on_policy_replay or any((Path(ref) / "config.yaml").is_file() for ref in self.sources)

    @field_validator("source", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) and v not in OWN_ANSWERS else v


class EwcConfig(BaseModel):
    model_config = STRICT
    weight: float = Field(0.0, ge=0, description="λ_ewc of Σ F·(θ−θ₀)² (Kirkpatrick et al. 2017); 0 turns EWC off.")
    samples: int = Field(64, ge=1, description="General rows used to estimate the diagonal Fisher once per run.")


class BudgetConfig(BaseModel):
    """What the model may lose, stated once; forgetless steers training to stay within it (docs/forgetting.md)."""

    model_config = STRICT
    kl: float | None = Field(
        None,
        gt=0,
        description="Largest KL to the base per token on the held-out general prompts (the number the report's "
        "retention section prints). During training a controller moves the LwF weight (or, without LwF, the "
        "rehearsal CE weight) to hold the probe's KL near it; after training the adapter is scaled down if needed.",
    )
    mc_drop: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Largest drop in multiple-choice accuracy (eval.benchmarks, e.g. 0.02 = two points), checked "
        "after training; the adapter is scaled down until it holds.",
    )
    every: int = Field(
        2,
        ge=1,
        description="Optimizer steps between the controller's probe measurements (each costs about a third of a "
        "training step; every 2 with horizon 3 was chosen on validation rows, docs/forgetting.md).",
    )
    probe_prompts: int = Field(
        8,
        ge=1,
        description="Held-out general prompts the controller's probe measures (picked evenly through "
        "eval.retention's, so every category and language is in it).",
    )
    horizon: float = Field(
        3.0,
        gt=0,
        description="Steps over which a probe KL e times the budget multiplies the weight by e (a far-off KL moves "
        "the weight by at most exp(every/horizon) per probe); larger = gentler.",
    )
    lookahead: float = Field(
        0.0,
        ge=0,
        description="Probes ahead at which the controller reads the KL's trend (the last two probes' change "
        "carried forward): a KL over the budget but falling fast stops raising the weight; 0 = proportional only.",
    )
    hold: bool = Field(
        True,
        description="Above the budget but lower than at the last probe, hold the weight rather than raise it "
        "(conditional integration, the anti-windup of PI controllers): the KL is already coming back. Chosen on "
        "three seeds of validation rows (docs/forgetting.md); false = raise it at every probe over the budget.",
    )
    dial: bool = Field(
        True,
        description="After training, scale a LoRA adapter down (the tune-scale dial) until the budget holds when "
        "the trained model is over it; false = report it as not met.",
    )

    @property
    def set(self) -> bool:
        return self.kl is not None or self.mc_drop is not None


class ForgettingConfig(BaseModel):
    model_config = STRICT
    preset: Literal["none", "lwf", "rehearsal", "full"] = Field(
        "full",
        description="none: task loss only; lwf: + KL to the base model; rehearsal: + general data in every "
        "batch; full: both (the configuration the literature recommends).",
    )
    lwf: LwfConfig = LwfConfig()
    rehearsal: RehearsalConfig = RehearsalConfig()
    l2: float = Field(0.0, ge=0, description="Weight of Σ(θ−θ₀)² on the trainable weights; 0.1 is typical, 0 = off.")
    ewc: EwcConfig = EwcConfig()
    budget: BudgetConfig = BudgetConfig()

    @model_validator(mode="after")
    def _on_policy_rehearses(self) -> ForgettingConfig:
        if self.rehearsal.on_policy_replay and not self.uses_rehearsal:
            raise ValueError(
                f"forgetting.rehearsal.source on_policy: preset {self.preset!r} mixes no rehearsal rows in; "
                "set forgetting.preset to rehearsal or full"
            )
        if self.rehearsal.on_policy_replay and self.uses_lwf and self.lwf.teacher == "cached":
            raise ValueError(
                "forgetting.lwf.teacher cached: on-policy replay's rows are new answers the cache cannot hold; "
                "use teacher online (or auto)"
            )
        return self

    @model_validator(mode="after")
    def _budget_steers(self) -> ForgettingConfig:
        if self.budget.set and not (self.uses_lwf or self.uses_rehearsal):
            raise ValueError(
                f"forgetting.budget: preset {self.preset!r} has no LwF or rehearsal for the budget to steer; "
                "set forgetting.preset to full (or lwf, rehearsal), or remove forgetting.budget"
            )
        return self

    @property
    def steered(self) -> str | None:
        """The weight the budget's controller moves: the LwF λ, else the rehearsal CE weight; None without a KL
        budget."""
        if self.budget.kl is None:
            return None
        return "lwf" if self.uses_lwf else "rehearsal"

    @property
    def kl_tokens(self) -> list[str]:
        """Where the LwF KL applies: `lwf.tokens`, or when unset the automatic choice (`kl_tokens_of`)."""
        return kl_tokens_of(self.lwf.tokens, self.budget.kl)

    @property
    def uses_lwf(self) -> bool:
        return self.preset in ("lwf", "full") and self.lwf.weight > 0

    @property
    def uses_rehearsal(self) -> bool:
        return self.preset in ("rehearsal", "full")

    @property
    def rehearsal_ce_weight(self) -> float:
        """The CE weight on the base model's own answers (self-rehearsal)."""
        return rehearsal_ce_weight(self.preset, self.rehearsal.weight, self.lwf.weight, self.kl_tokens)

    @property
    def replay_ce_weight(self) -> float:
        """The CE weight on earlier runs' training rows: the KL to the base does not teach an earlier task's
        answers, so the automatic weight stays 1 under `full` too."""
        return 1.0 if self.rehearsal.weight is None else self.rehearsal.weight


def kl_tokens_of(tokens: list[str] | None, budget_kl: float | None) -> list[str]:
    """`forgetting.lwf.tokens` as training uses it. Unset, the KL goes on the task rows' context and the general
    rows, except under a KL budget: there on the general rows only, the number the budget bounds. Raised by the
    controller, a KL on the task's own prompt tokens held the task back (triage's validation rows: 90% of plain
    LoRA's gain with it, 100% without; docs/forgetting.md)."""
    if tokens is not None:
        return tokens
    return ["rehearsal"] if budget_kl is not None else ["context", "rehearsal"]


def rehearsal_ce_weight(preset: str, weight: float | None, lwf_weight: float, lwf_tokens: list[str]) -> float:
    """The CE weight on rehearsal rows that `forgetting.rehearsal.weight` (unset = automatic) means."""
    if weight is not None:
        return weight
    distilled = preset == "full" and lwf_weight > 0 and "rehearsal" in lwf_tokens
    return 0.0 if distilled else 1.0
