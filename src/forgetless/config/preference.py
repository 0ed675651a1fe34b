"""Config sections of the preference and RL recipes: DPO, RLHF and GRPO with its rewards (the reward model
needs none of its own)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from forgetless.config.fields import STRICT


class DpoConfig(BaseModel):
    model_config = STRICT
    beta: float = Field(
        0.1, gt=0, description="β: how far the policy may move from the reference (Rafailov et al. 2023: 0.1-0.5)."
    )
    loss: Literal["sigmoid", "ipo"] = Field(
        "sigmoid",
        description="sigmoid: DPO's −log σ(β·h); ipo: (h − 1/2β)² on length-averaged log-probabilities (Azar et "
        "al. 2023), which does not push the margin to infinity on deterministic preferences.",
    )
    sft_weight: float = Field(
        0.0, ge=0, description="Weight of a cross-entropy term on the chosen answers (0 = off; RPO uses 1)."
    )


class RlhfConfig(BaseModel):
    model_config = STRICT
    reward_model: str | None = Field(
        None, description="The reward model: a `recipe: reward` run directory (or its adapter directory)."
    )
    kl_coef: float = Field(
        0.05, ge=0, description="β of the per-token KL penalty to the reference (adapters off); TRL's default 0.05."
    )
    rollout_prompts: int = Field(8, ge=1, description="Prompts sampled per rollout (each gets one answer).")
    ppo_epochs: int = Field(2, ge=1, description="Passes of PPO over each rollout (Schulman et al. 2017: 3-10).")
    clip: float = Field(0.2, gt=0, lt=1, description="ε of the clipped policy ratio (PPO paper: 0.2).")
    value_clip: float = Field(0.2, gt=0, description="Clip range of the value update around the rollout's values.")
    value_weight: float = Field(0.1, ge=0, description="Weight of the value loss against the policy loss.")
    gamma: float = Field(1.0, gt=0, le=1, description="Discount over answer tokens (1: the answer is one episode).")
    lam: float = Field(0.95, ge=0, le=1, description="λ of generalised advantage estimation (0.95).")
    max_new_tokens: int = Field(32, ge=1, description="Length limit of sampled answers.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts (1 = the policy itself).")


BUILTIN_REWARDS = ("exact_match", "numeric", "regex", "json_schema", "length", "reward_model")


class RewardSpec(BaseModel):
    """One reward of a GRPO run: a built-in check against the row's reference answer, a user function
    `module:function`, or a trained reward model; the run's reward is the weighted sum of its rewards."""

    model_config = STRICT
    kind: str = Field(
        description="exact_match | numeric | regex | json_schema | length | reward_model, or 'module:function' "
        "called as f(prompt, answer, reference) and returning a number."
    )
    weight: float = Field(1.0, description="Its weight in the sum.")
    tolerance: float = Field(0.0, ge=0, description="numeric: the largest absolute difference that still matches.")
    pattern: str | None = Field(None, description="regex: the pattern the whole answer must match (re.fullmatch).")
    json_schema: dict | None = Field(None, description="json_schema: the JSON Schema the answer must parse against.")
    min_chars: int = Field(0, ge=0, description="length: the shortest answer (characters) that scores 1.")
    max_chars: int | None = Field(None, ge=1, description="length: the longest answer (characters) that scores 1.")
    run: str | None = Field(None, description="reward_model: a `recipe: reward` run directory.")

    @model_validator(mode="after")
    def _complete(self) -> RewardSpec:
        needs = {"regex": "pattern", "json_schema": "json_schema", "reward_model": "run"}
        if self.kind not in BUILTIN_REWARDS and ":" not in self.kind:
            raise ValueError(f"reward kind '{self.kind}': choose {', '.join(BUILTIN_REWARDS)} or 'module:function'")
        if self.kind in needs and getattr(self, needs[self.kind]) is None:
            raise ValueError(f"reward kind {self.kind} needs {needs[self.kind]}")
        if self.kind == "length" and self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(f"reward length: max_chars {self.max_chars} < min_chars {self.min_chars}")
        return self


class GrpoConfig(BaseModel):
    """Group relative policy optimisation (Shao et al. 2024, DeepSeekMath): G sampled answers per prompt,
    each answer's advantage its reward against its group's, no value model."""

    model_config = STRICT
    group_size: int = Field(4, ge=2, description="G: answers sampled per prompt (DeepSeekMath: 64; small on CPU).")
    prompts_per_step: int = Field(4, ge=1, description="Prompts per rollout; G × this many answers per rollout.")
    updates: int = Field(1, ge=1, description="Passes over each rollout (μ; 1 = on-policy, the ratio is 1).")
    clip: float = Field(0.2, gt=0, lt=1, description="ε of the clipped policy ratio.")
    kl_coef: float = Field(
        0.04, ge=0, description="β of the KL to the base (adapters off), k3 estimator per token (DeepSeekMath: 0.04)."
    )
    loss: Literal["grpo", "dr_grpo"] = Field(
        "grpo",
        description="grpo: each answer's token mean, advantages scaled by the group's std; dr_grpo (Liu et al. "
        "2025): token sums over a constant (max_new_tokens) and no std scaling, which removes the length and "
        "difficulty biases.",
    )
    max_new_tokens: int = Field(24, ge=1, description="Length limit of sampled answers.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(kind="numeric")],
        description="What an answer is worth: a list of {kind, weight, ...}; the sum of weight × reward.",
    )
