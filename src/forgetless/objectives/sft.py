"""The training objective: task cross-entropy plus the forgetting terms the config turns on.

    loss = CE(task answers)                          token-mean over the task answer tokens
         + w_r · CE(rehearsal answers)               token-mean over the rehearsal answer tokens
                                                     (w_r: the self-answers' weight, or the replayed
                                                     real answers' weight on those rows)
         + λ · T² · KL(p_finetuned ‖ p_base)         mean over the chosen KL positions
         + l2 · Σ(θ − θ₀)²  +  λ_ewc · Σ F·(θ − θ₀)²  once per optimizer step

Each CE is a mean over its own tokens, so long general answers in the rehearsal rows do not
dilute the task signal (the quickstart's task answers are ~15 tokens, the base model's general
answers ~90). The teacher is the same model with its adapters switched off, under no_grad.
Only the selected positions' logits are turned into float32 distributions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.profiler import record_function

from forgetless.adapters.views import base_view
from forgetless.config.schema import ForgettingConfig
from forgetless.model import forward
from forgetless.objectives.losses import (
    batch_seed,
    ce_sum_chunked,
    chunked_sum,
    ewc_penalty,
    frozen_linear,
    kl_sum_chunked,
    kl_sum_fused,
    kl_topk_sum,
    l2_penalty,
    position_masks,
    sample_positions,
)
from forgetless.objectives.objective import Objective

if TYPE_CHECKING:  # types only: reference/ builds these from the base model and imports objectives/losses
    from forgetless.reference.fisher import Anchor
    from forgetless.reference.topk import TeacherCache


def kl_positions(masks: dict[str, torch.Tensor], tokens: list[str]) -> torch.Tensor:
    names = {"context": "context", "rehearsal": "rehearsal", "answers": "task_answers"}
    out = torch.zeros_like(masks["context"])
    for t in tokens:
        out |= masks[names[t]]
    return out


def masks_of(batch: dict) -> dict[str, torch.Tensor]:
    return position_masks(
        batch["labels"], batch["attention_mask"], batch["rehearsal"], batch.get("position_ids"), batch.get("replay")
    )


def counts(batch: dict, cfg: ForgettingConfig) -> dict[str, int]:
    """How many units each loss term averages over, for the loop's step-wide normalisation."""
    m = masks_of(batch)
    out = {"targets": int(m["task_answers"].sum()), "rehearsal": int(m["rehearsal_answers"].sum()), "batches": 1}
    if cfg.uses_lwf:
        out["kl"] = int(kl_positions(m, cfg.lwf.tokens).sum())
    return out


def objective(
    cfg: ForgettingConfig, anchor: Anchor | None = None, teacher: TeacherCache | None = None, chunk: int = 1024
) -> Objective:
    """The SFT objective for `loop.fit`: the terms above, each logged separately, with their units
    (`counts`): targets, rehearsal answer tokens, KL positions, micro-batches.

    The output head runs only on the positions a term counts, `chunk` positions at a time
    (`forward.hidden`); with `teacher` (a cached top-k teacher) there is no teacher forward pass.
    """
    lwf = cfg.lwf
    # the rehearsal CE's weights, once (whether earlier runs are among the sources looks at the disk)
    own_w, replay_w = cfg.rehearsal_ce_weight, cfg.replay_ce_weight if cfg.rehearsal.replays else 0.0

    def loss_fn(model, batch: dict, norms: dict[str, float]) -> dict[str, torch.Tensor]:
        masks = masks_of(batch)
        with record_function("forgetless::forward"):  # the regions of `train.profile_steps` (training/profile.py)
            out = forward.hidden(model, batch)
        states, targets = out.states[:, :-1], batch["labels"][:, 1:]

        def ce(mask):
            with record_function("forgetless::ce"):
                return ce_sum_chunked(states[mask], targets[mask], out.head, chunk)

        terms = {"ce": ce(masks["task_answers"]) / norms["targets"]}
        if cfg.uses_rehearsal and (own_w > 0 or replay_w > 0):
            if own_w == replay_w:  # one weight for every rehearsal answer
                total = own_w * ce(masks["rehearsal_answers"])
            else:  # preset full: general rows are left to the KL, an earlier task's real answers replayed
                replayed = masks["replayed_answers"]
                total = own_w * ce(masks["rehearsal_answers"] & ~replayed) + replay_w * ce(replayed)
            terms["ce_rehearsal"] = total / norms["rehearsal"]
        if cfg.uses_lwf:
            where = kl_positions(masks, lwf.tokens)
            if lwf.positions < 1:
                where = sample_positions(where, lwf.positions, batch_seed(batch))
            kl = torch.zeros((), device=states.device)  # stays 0 for e.g. a task-only piece under tokens=[rehearsal]
            if where.any() and teacher is not None:
                kl = _cached_kl(teacher, batch, out, states[where], where, lwf, chunk)
            elif where.any():
                kl = _online_kl(model, batch, out, states[where], where, lwf, chunk)
            terms["lwf"] = lwf.weight * kl / (norms["kl"] * lwf.positions)  # the units count every position
        if anchor is not None and cfg.l2 > 0:
            terms["l2"] = cfg.l2 * l2_penalty(anchor.params, anchor.initial) / norms["batches"]
        if anchor is not None and anchor.fisher is not None and cfg.ewc.weight > 0:
            terms["ewc"] = cfg.ewc.weight * ewc_penalty(anchor.params, anchor.initial, anchor.fisher) / norms["batches"]
        return terms

    return Objective(loss_fn, lambda batch: counts(batch, cfg))


def _online_kl(model, batch, out: forward.Outputs, student: torch.Tensor, where: torch.Tensor, lwf, chunk: int):
    """The KL against the base model's forward pass on the same batch (adapters off, no gradient).

    When the output head is frozen (LoRA, DoRA, IA3, adapters) the teacher's hidden states go
    through it a slice at a time, like the student's. When training changes the head (full,
    selective), the teacher's logits must come from inside `base_view`: they are made there.
    """
    with torch.no_grad(), base_view(model) as base, record_function("forgetless::teacher_forward"):
        t_out = forward.hidden(base, batch)
        t_states = t_out.states[:, :-1][where]
        head_trained = t_out.head is not None and any(p.requires_grad for p in t_out.head.parameters())
        if head_trained:
            t_states = torch.cat([t_out.head(t_states[s : s + chunk]) for s in range(0, t_states.shape[0], chunk)])
    teacher_head = None if (t_out.head is None or head_trained) else t_out.head
    with record_function("forgetless::kl"):
        if teacher_head is not None and out.head is teacher_head and frozen_linear(teacher_head):
            return kl_sum_fused(student, t_states, teacher_head, lwf.temperature, lwf.direction, chunk)
        return kl_sum_chunked(student, t_states, lwf.temperature, lwf.direction, out.head, teacher_head, chunk)


def _cached_kl(teacher: TeacherCache, batch, out: forward.Outputs, student, where, lwf, chunk: int):
    """The KL against the cached top-k teacher: no teacher forward pass."""
    idx, logp, tail = (t[where] for t in teacher.lookup(batch))

    def term(s, i, lp, tl):
        logits = s if out.head is None else out.head(s)
        return kl_topk_sum(logits, i, lp, tl, lwf.temperature, lwf.direction)

    with record_function("forgetless::kl"):
        return chunked_sum(term, chunk, student, idx, logp, tail)
