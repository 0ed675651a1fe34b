"""Config sections of the preference recipes: DPO and RLHF (the reward model needs none of its own)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

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
