"""RLHF with PPO: rollouts (sampled answers scored by a reward model) as a data stream for `loop.fit`,
the value head, and the PPO loss function.

A rollout takes `rlhf.rollout_prompts` prompts, samples one answer each from the current policy,
and records per answer token: the policy's log-probability, the reference's (adapters off), the
value estimate; the reward is the reward model's score at the answer's last token minus
β·(log π − log π_ref) at every token (Ouyang et al. 2022; Ziegler et al. 2019). Advantages come
from GAE and are whitened over the rollout. The rollout then serves `rlhf.ppo_epochs` passes of
micro-batches; `train.grad_accum` micro-batches make one optimizer step.

Rollouts depend on the policy, so `--resume` continues from the checkpoint's weights and
data position but samples new rollouts (the answers are not stored).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from forgetless.adapters.views import base_view
from forgetless.config.schema import RlhfConfig
from forgetless.data.batching import collate
from forgetless.model.chat_format import prompt_text
from forgetless.model.forward import logits_of
from forgetless.model.likelihood import IGNORE
from forgetless.objectives.losses import gae, ppo_losses
from forgetless.objectives.objective import Objective

VALUE_HEAD = "value_head"


def add_value_head(model) -> nn.Linear:
    """A linear value head on the policy's last hidden state, trained with the adapters (zero-initialised:
    the first values are 0, so the first advantages are the rewards themselves)."""
    head = nn.Linear(model.config.hidden_size, 1).to(next(model.parameters()).device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    model.add_module(VALUE_HEAD, head)
    return head


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, T-1): log-probability of each next token under the logits."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def policy_outputs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(token log-probs, values), both (B, T-1), from one forward pass of the policy."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    hidden = out.hidden_states[-1][:, :-1]
    head = getattr(model, VALUE_HEAD)
    values = head(hidden.to(head.weight.dtype)).squeeze(-1).float()
    return token_logps(out.logits, batch["input_ids"]), values


class Rollouts:
    """Batches-compatible stream (len, epoch(e, start)) whose micro-batches come from fresh rollouts."""

    def __init__(self, model, tokenizer, scorer, prompts: list, cfg: RlhfConfig, batch_size: int, seed: int):
        self.model, self.tokenizer, self.scorer, self.prompts, self.cfg = model, tokenizer, scorer, prompts, cfg
        self.batch_size, self.seed = batch_size, seed
        self.per_rollout = cfg.ppo_epochs * math.ceil(cfg.rollout_prompts / batch_size)
        self._cache: dict[tuple[int, int], dict] = {}
        self.history: list[dict] = []  # mean score and KL of every rollout, for the summary

    def __len__(self) -> int:
        return math.ceil(len(self.prompts) / self.cfg.rollout_prompts) * self.per_rollout

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.prompts), generator=g).tolist()
        n = self.cfg.rollout_prompts
        per_pass = math.ceil(n / self.batch_size)
        for i in range(start, len(self)):
            k, within = divmod(i, self.per_rollout)
            if (epoch, k) not in self._cache:
                self._cache = {(epoch, k): self.rollout([self.prompts[j] for j in order[k * n : (k + 1) * n]])}
            data = self._cache[(epoch, k)]
            m = within % per_pass
            rows = slice(m * self.batch_size, (m + 1) * self.batch_size)
            yield {name: t[rows] for name, t in data.items()}

    # one piece: sample -> score -> per-token KL penalty -> GAE -> whitened advantages, in PPO's order
    @torch.no_grad()
    def rollout(self, prompts: list) -> dict[str, torch.Tensor]:
        model, tok, cfg = self.model, self.tokenizer, self.cfg
        was_training = model.training
        model.eval()
        texts = [prompt_text(tok, list(p)) for p in prompts]
        side, tok.padding_side = tok.padding_side, "left"
        try:  # the tokenizer is shared with training and evaluation: its padding side must come back
            enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(model.device)
        finally:
            tok.padding_side = side
        out = model.generate(
            **enc,
            max_new_tokens=cfg.max_new_tokens,
            do_sample=True,
            temperature=cfg.temperature,
            top_k=0,
            top_p=1.0,
            pad_token_id=tok.pad_token_id,
        )
        rows, answers = [], []
        width = enc["input_ids"].shape[1]
        for i in range(len(prompts)):
            prompt_ids = enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist()
            answer = out[i, width:].tolist()
            if tok.eos_token_id in answer:  # keep the end-of-turn token: ending the answer is an action too
                answer = answer[: answer.index(tok.eos_token_id) + 1]
            answer = answer or [tok.eos_token_id]
            rows.append({"input_ids": prompt_ids + answer, "labels": [IGNORE] * len(prompt_ids) + answer})
            answers.append(tok.decode(answer, skip_special_tokens=True).strip())
        batch = {k: v.to(model.device) for k, v in collate(rows, tok.pad_token_id).items()}
        mask = (batch["labels"][:, 1:] != IGNORE).float()
        logp, values = policy_outputs(model, batch)
        with base_view(model) as base:
            ref = token_logps(logits_of(base, batch["input_ids"], batch["attention_mask"]), batch["input_ids"])
        scores = torch.tensor(self.scorer([list(p) for p in prompts], answers), device=model.device)
        kl = (logp - ref) * mask
        rewards = -cfg.kl_coef * kl
        last = mask.cumsum(-1).argmax(-1)  # the answer's last token
        rewards[torch.arange(len(rows)), last] += scores
        adv, returns = gae(rewards, values * mask, mask, cfg.gamma, cfg.lam)
        live = mask.bool()
        adv = (adv - adv[live].mean()) / (adv[live].std() + 1e-8) * mask  # whitened over the rollout
        self.history.append({"score": float(scores.mean()), "kl": float(kl.sum(-1).mean())})
        model.train(was_training)
        return batch | {
            "old_logp": logp,
            "old_values": values * mask,
            "advantages": adv,
            "returns": returns,
            "mask": mask,
            "scores": scores,
            "kl": kl.sum(-1),
        }


def ppo_counts(batch: dict) -> dict[str, int]:
    return {"tokens": int(batch["mask"].sum()), "rows": batch["input_ids"].shape[0], "batches": 1}


def ppo_objective(cfg: RlhfConfig) -> Objective:
    """Clipped PPO policy loss and value loss, per answer token; reward, KL and clip share logged."""

    def loss_fn(model, batch: dict, norms: dict[str, float]):
        logp, values = policy_outputs(model, batch)
        mask = batch["mask"]
        policy, value = ppo_losses(
            logp,
            batch["old_logp"],
            batch["advantages"],
            values,
            batch["old_values"],
            batch["returns"],
            mask,
            cfg.clip,
            cfg.value_clip,
        )
        clipped = ((logp - batch["old_logp"]).exp().sub(1).abs() > cfg.clip).float() * mask
        terms = {"policy": policy / norms["tokens"], "value": cfg.value_weight * value / norms["tokens"]}
        metrics = {
            "reward": batch["scores"].sum() / norms["rows"],
            "kl": batch["kl"].sum() / norms["rows"],
            "clip_fraction": clipped.sum() / norms["tokens"],
        }
        return terms, metrics

    return Objective(loss_fn, ppo_counts)
