"""PPO: one step on rollouts of the tiny model."""

from __future__ import annotations

import torch

from forgetless.adapters import attaching
from forgetless.config.schema import PeftConfig, RlhfConfig


def test_ppo_step_changes_only_trainable_parameters_and_starts_at_zero_kl(tiny_dir, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from forgetless.config.schema import TrainConfig
    from forgetless.objectives.ppo import Rollouts, add_value_head, ppo_objective
    from forgetless.training import loop

    torch.manual_seed(0)
    model = attaching.attach(
        AutoModelForCausalLM.from_pretrained(tiny_dir), PeftConfig(r=4), quantized=False, grad_checkpointing=False
    )
    add_value_head(model)
    cfg = RlhfConfig(reward_model="unused", rollout_prompts=4, ppo_epochs=2, max_new_tokens=6)
    prompts = [({"role": "user", "content": f"Say something {i}."},) for i in range(8)]

    def scorer(ps, answers):  # reward: longer answers are better
        return [float(len(a)) / 10 for a in answers]

    stream = Rollouts(model, tokenizer, scorer, prompts, cfg, batch_size=2, seed=0)
    first = next(stream.epoch(0))
    assert first["kl"].abs().max().item() < 1e-5  # the policy is the reference before any update
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("value_head") for n in trainable)
    summary = loop.fit(
        model,
        stream,
        ppo_objective(cfg),
        TrainConfig(max_steps=2, grad_accum=2, lr=1e-2),
        tmp_path,
    )
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable and summary["steps"] == 2
    assert {"policy", "value", "reward", "kl", "clip_fraction"} <= set(summary["final"])
