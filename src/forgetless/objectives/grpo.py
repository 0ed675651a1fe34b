"""GRPO: rollouts of G sampled answers per prompt, scored by `grpo.rewards`, as a data stream for
`loop.fit`; and the GRPO objective (Shao et al. 2024).

A rollout takes `grpo.prompts_per_step` prompts and samples `grpo.group_size` answers to each from the
current policy in one batched `generate` (key/value cache, each row stopping at its end of turn). Each
answer's advantage is its reward against its group's (`group_advantages`); the reference's token
log-probabilities come from the same model with the adapter off (no second copy). The rollout then
serves `grpo.updates` passes of micro-batches. With `updates: 1` the policy that sampled is the one
being trained, so the ratio is 1 and its old log-probabilities are the current ones, detached (one
forward pass fewer per rollout).

With forgetting controls on (`forgetting.preset` lwf, rehearsal or full), every micro-batch also
carries general rows (the base model's own answers by default) that the forgetting terms see
(objectives/forgetting.py): the KL to the base on their tokens and/or their cross-entropy, as in an SFT run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from forgetless.adapters.views import base_view
from forgetless.config.schema import GrpoConfig
from forgetless.data.batching import collate
from forgetless.model.chat_format import prompt_text
from forgetless.model.forward import logits_of
from forgetless.model.likelihood import IGNORE
from forgetless.objectives.losses import grpo_losses
from forgetless.objectives.objective import Objective
from forgetless.objectives.ppo import token_logps
from forgetless.objectives.rewards import Rewards, Rollout


def group_advantages(rewards: torch.Tensor, group: int, scale: bool) -> torch.Tensor:
    """GRPO's advantage of each answer: its reward minus its group's mean (the G answers to one prompt,
    consecutive), divided by the group's std when `scale` (GRPO; Dr. GRPO leaves it out: it weights easy
    and hard prompts unequally). A group whose answers all score the same has advantage 0."""
    r = rewards.view(-1, group)
    adv = r - r.mean(-1, keepdim=True)
    if scale:
        adv = adv / (r.std(-1, keepdim=True) + 1e-4)
    return adv.reshape(-1)


class GroupRollouts:
    """Batches-compatible stream (len, epoch(e, start)) whose micro-batches come from fresh rollouts.
    `rows`: (where, prompt conversation, reference answer); `general`: encoded general rows to put
    beside every micro-batch (the forgetting controls), or none."""

    def __init__(self, model, tokenizer, rewards: Rewards, rows: list, cfg: GrpoConfig, batch_size: int, seed: int,
                 general: list[dict] | None = None, general_per_batch: int = 0):  # fmt: skip
        self.model, self.tokenizer, self.rewards, self.rows, self.cfg = model, tokenizer, rewards, rows, cfg
        self.batch_size, self.seed = batch_size, seed
        self.general, self.n_general = [{**r, "rehearsal": True} for r in general or []], general_per_batch
        answers = cfg.prompts_per_step * cfg.group_size
        self.per_pass = math.ceil(answers / batch_size)
        self.per_rollout = cfg.updates * self.per_pass
        self._cache: dict[tuple[int, int], dict] = {}
        self.history: list[dict] = []  # mean reward (and each reward's) of every rollout, for the summary

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.cfg.prompts_per_step) * self.per_rollout

    def epoch(self, epoch: int, start: int = 0) -> Iterator:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.rows), generator=g).tolist()
        n = self.cfg.prompts_per_step
        for i in range(start, len(self)):
            k, within = divmod(i, self.per_rollout)
            if (epoch, k) not in self._cache:
                self._cache = {(epoch, k): self.rollout([self.rows[j] for j in order[k * n : (k + 1) * n]])}
            data = self._cache[(epoch, k)]
            m = within % self.per_pass
            part = {name: t[m * self.batch_size : (m + 1) * self.batch_size] for name, t in data.items()}
            yield [part, self._general(epoch, i)] if self.n_general else part

    def _general(self, epoch: int, i: int) -> dict[str, torch.Tensor]:
        """The general rows beside micro-batch i: a seeded draw, the same on a resumed run."""
        g = torch.Generator().manual_seed(self.seed * 7_919 + epoch * 100_003 + i)
        picked = torch.randint(len(self.general), (self.n_general,), generator=g).tolist()
        return collate([self.general[j] for j in picked], self.tokenizer.pad_token_id)

    @torch.no_grad()
    def sample(self, prompts: list[list[dict]]) -> tuple[list[list[int]], list[list[int]], list[str]]:
        """(prompt ids, answer ids, answer text) of `group_size` sampled answers to each prompt, in order."""
        model, tok, cfg = self.model, self.tokenizer, self.cfg
        texts = [prompt_text(tok, p) for p in prompts for _ in range(cfg.group_size)]
        side, tok.padding_side = tok.padding_side, "left"
        try:  # the tokenizer is shared with training and evaluation: its padding side must come back
            enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(model.device)
        finally:
            tok.padding_side = side
        was_training = model.training
        model.eval()
        out = model.generate(**enc, max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=cfg.temperature,
                             top_k=0, top_p=1.0, pad_token_id=tok.pad_token_id)  # fmt: skip
        model.train(was_training)
        prompt_ids, answer_ids, answers = [], [], []
        for i in range(len(texts)):
            answer = out[i, enc["input_ids"].shape[1] :].tolist()
            if tok.eos_token_id in answer:  # keep the end-of-turn token: ending the answer is an action too
                answer = answer[: answer.index(tok.eos_token_id) + 1]
            prompt_ids.append(enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist())
            answer_ids.append(answer or [tok.eos_token_id])
            answers.append(tok.decode(answer, skip_special_tokens=True).strip())
        return prompt_ids, answer_ids, answers

    @torch.no_grad()
    def rollout(self, items: list) -> dict[str, torch.Tensor]:
        """Sample, score, compare within each group; the reference's log-probabilities with the adapter off."""
        model, cfg = self.model, self.cfg
        prompt_ids, answer_ids, answers = self.sample([list(p) for _, p, _ in items])
        group = [it for it in items for _ in range(cfg.group_size)]
        scored = [Rollout(w, list(p), a, ref) for (w, p, ref), a in zip(group, answers, strict=True)]
        rewards, means = self.rewards(scored)
        rows = [
            {"input_ids": p + a, "labels": [IGNORE] * len(p) + a} for p, a in zip(prompt_ids, answer_ids, strict=True)
        ]
        batch = {k: v.to(model.device) for k, v in collate(rows, self.tokenizer.pad_token_id).items()}
        scores = torch.tensor(rewards, device=model.device)
        batch["advantages"] = group_advantages(scores, cfg.group_size, scale=cfg.loss == "grpo")
        batch["scores"] = scores
        if cfg.kl_coef > 0:
            with base_view(model) as base:
                logits = logits_of(base, batch["input_ids"], batch["attention_mask"])
                batch["ref_logp"] = token_logps(logits, batch["input_ids"])
        if cfg.updates > 1:  # the sampling policy's log-probabilities, for the ratio of later passes
            batch["old_logp"] = token_logps(
                logits_of(model, batch["input_ids"], batch["attention_mask"]), batch["input_ids"]
            )
        groups = scores.view(-1, cfg.group_size)
        signal = float((groups.max(-1).values > groups.min(-1).values).float().mean())  # groups that teach
        self.history.append({"reward": float(scores.mean()), **means, "groups_with_signal": signal})
        return batch


def counts(batch: dict) -> dict[str, int]:
    return {"rows": batch["input_ids"].shape[0], "answer_tokens": int((batch["labels"][:, 1:] != IGNORE).sum())}


def objective(cfg: GrpoConfig, controls: Objective | None = None) -> Objective:
    """The GRPO policy loss and β·KL to the base, per answer (token mean: grpo; over max_new_tokens:
    dr_grpo), averaged over the step's answers; with `controls` (objectives/forgetting.py's terms alone),
    those terms on the general rows beside each micro-batch."""

    def loss_fn(model, batch: dict, norms: dict[str, float]):
        if "advantages" not in batch:  # a micro-batch's general rows
            return controls.loss(model, batch, norms)
        logp = token_logps(logits_of(model, batch["input_ids"], batch["attention_mask"]), batch["input_ids"])
        mask = (batch["labels"][:, 1:] != IGNORE).float()
        old = batch["old_logp"] if "old_logp" in batch else logp.detach()
        ref = batch["ref_logp"] if "ref_logp" in batch else logp.detach()
        per_row = mask.sum(-1).clamp(min=1) if cfg.loss == "grpo" else float(cfg.max_new_tokens)
        policy, kl = grpo_losses(logp, old, ref, batch["advantages"], mask, cfg.clip, per_row)
        terms = {"policy": policy / norms["rows"]}
        if cfg.kl_coef > 0:
            terms["kl"] = cfg.kl_coef * kl / norms["rows"]
        metrics = {"reward": batch["scores"].sum() / norms["rows"], "kl_to_base": kl.detach() / norms["rows"]}
        return terms, metrics

    def count_fn(batch: dict) -> dict[str, int]:
        return counts(batch) if "advantages" in batch else controls.count(batch)

    return Objective(loss_fn, count_fn)
