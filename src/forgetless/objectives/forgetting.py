"""The forgetting controls as one component, used by every recipe that trains with them (SFT, DPO, GRPO):

    + w_r · CE(rehearsal answers)               token-mean over the rehearsal answer tokens
                                                (w_r: the self-answers' weight, or the replayed
                                                real answers' weight on those rows)
    + λ · T² · KL(p_finetuned ‖ p_base)         mean over the chosen KL positions
    + l2 · Σ(θ − θ₀)²  +  λ_ewc · Σ F·(θ − θ₀)²  once per optimizer step

with their units (rehearsal answer tokens, KL positions, micro-batches) and the weights a forgetting
budget's controller moves during training (`Weights`, `Controller`). The teacher is the same model with
its adapters switched off, under no_grad, or its cached top-k log-probabilities; the EWC anchor and the
teacher cache are prepared by the recipe's runtime before training (recipes/runtime.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.profiler import record_function

from forgetless.adapters.views import base_view
from forgetless.config.schema import ForgettingConfig
from forgetless.model import forward, hardware
from forgetless.objectives.fused_kl import frozen_linear, kl_sum_fused, kl_topk_sum_fused
from forgetless.objectives.losses import (
    batch_seed,
    ce_sum_chunked,
    chunked_sum,
    ewc_penalty,
    kl_sum,
    kl_sum_chunked,
    kl_topk_sum,
    l2_penalty,
    position_masks,
    sample_positions,
)
from forgetless.objectives.objective import Objective

if TYPE_CHECKING:  # types only: reference/ builds these from the base model and imports objectives/losses
    from forgetless.reference.fisher import Anchor
    from forgetless.reference.topk import TeacherCache

KL_TOKENS = {"context": "context", "rehearsal": "rehearsal", "answers": "task_answers"}


@dataclass
class Weights:
    """The weights of the terms above as training uses them: the config's values, which a forgetting
    budget's `Controller` moves between optimizer steps (the loss reads them at every call)."""

    lwf: float
    rehearsal: float  # CE on the base model's own answers (self-rehearsal) and general files
    replay: float  # CE on earlier runs' training rows (task after task)

    @classmethod
    def of(cls, cfg: ForgettingConfig) -> Weights:
        # whether earlier runs are among the sources looks at the disk: once, here
        return cls(cfg.lwf.weight, cfg.rehearsal_ce_weight, cfg.replay_ce_weight if cfg.rehearsal.replays else 0.0)


def kl_positions(masks: dict[str, torch.Tensor], tokens: list[str]) -> torch.Tensor:
    out = torch.zeros_like(masks["context"])
    for t in tokens:
        out |= masks[KL_TOKENS[t]]
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
        out["kl"] = int(kl_positions(m, cfg.kl_tokens).sum())
    return out


# one piece: each term reads the same masks, states and weights; split, it would pass them all around
def terms(model, batch, out: forward.Outputs, masks, norms, cfg: ForgettingConfig, w: Weights, extra) -> dict:
    """The forgetting terms of one micro-batch, given the student's forward pass `out`; `extra` is
    (anchor, teacher cache, chunk)."""
    anchor, teacher, chunk = extra
    states, targets = out.states[:, :-1], batch["labels"][:, 1:]
    result = {}

    def ce(mask):
        with record_function("forgetless::ce"):
            return ce_sum_chunked(states[mask], targets[mask], out.head, chunk)

    if cfg.uses_rehearsal and (w.rehearsal > 0 or w.replay > 0):
        if w.rehearsal == w.replay:  # one weight for every rehearsal answer
            total = w.rehearsal * ce(masks["rehearsal_answers"])
        else:  # preset full: general rows are left to the KL, an earlier task's real answers replayed
            replayed = masks["replayed_answers"]
            parts = ((w.rehearsal, masks["rehearsal_answers"] & ~replayed), (w.replay, replayed))
            # a weight of 0 (the general rows' CE under full) costs no head pass; one of the two is above 0
            total = sum(weight * ce(mask) for weight, mask in parts if weight > 0)
        result["ce_rehearsal"] = total / norms["rehearsal"]
    lwf = cfg.lwf
    if cfg.uses_lwf:
        where = kl_positions(masks, cfg.kl_tokens)
        if lwf.positions < 1:
            where = sample_positions(where, lwf.positions, batch_seed(batch))
        kl = torch.zeros((), device=states.device)  # stays 0 for e.g. a task-only piece under tokens=[rehearsal]
        if where.any() and teacher is not None:
            kl = _cached_kl(teacher, batch, out, states[where], where, lwf, chunk)
        elif where.any():
            kl = _online_kl(model, batch, out, states[where], where, lwf, chunk)
        result["lwf"] = w.lwf * kl / (norms["kl"] * lwf.positions)  # the units count every position
    return result | penalties(cfg, anchor, norms)


def penalties(cfg: ForgettingConfig, anchor: Anchor | None, norms) -> dict:
    """L2 and EWC towards θ₀, once per optimizer step (divided by the step's micro-batches)."""
    result = {}
    if anchor is not None and cfg.l2 > 0:
        result["l2"] = cfg.l2 * l2_penalty(anchor.params, anchor.initial) / norms["batches"]
    if anchor is not None and anchor.fisher is not None and cfg.ewc.weight > 0:
        result["ewc"] = cfg.ewc.weight * ewc_penalty(anchor.params, anchor.initial, anchor.fisher) / norms["batches"]
    return result


def lwf_on_logits(logits, ref_logits, where, batch, cfg: ForgettingConfig, w: Weights, norms) -> torch.Tensor:
    """The LwF term where a recipe has both models' full logits already (DPO's reference pass)."""
    lwf = cfg.lwf
    if lwf.positions < 1:
        where = sample_positions(where, lwf.positions, batch_seed(batch))
    kl = kl_sum(logits[:, :-1][where], ref_logits[:, :-1][where], lwf.temperature, lwf.direction)
    return w.lwf * kl / (norms["kl"] * lwf.positions)


def objective(
    cfg: ForgettingConfig, anchor: Anchor | None = None, teacher: TeacherCache | None = None, chunk: int = 1024
) -> Objective:
    """The forgetting terms alone, for the general rows of a recipe whose task loss is not SFT (DPO, GRPO)."""
    w = Weights.of(cfg)

    def loss_fn(model, batch: dict, norms: dict[str, float]) -> dict[str, torch.Tensor]:
        out = forward.hidden(model, batch)
        return terms(model, batch, out, masks_of(batch), norms, cfg, w, (anchor, teacher, chunk))

    return Objective(loss_fn, lambda batch: counts(batch, cfg))


def _online_kl(model, batch, out: forward.Outputs, student: torch.Tensor, where: torch.Tensor, lwf, chunk: int):
    """The KL against the base model's forward pass on the same batch (adapters off, no gradient), run only
    as far into each row as the KL positions reach (`forward.needed_part`).

    When the output head is frozen (LoRA, DoRA, IA3, adapters) the teacher's hidden states go
    through it a slice at a time, like the student's. When training changes the head (full,
    selective), the teacher's logits must come from inside `base_view`: they are made there.
    """
    part, at = forward.needed_part(batch, where)  # the model is causal: nothing after the last KL position
    with torch.no_grad(), base_view(model) as base, record_function("forgetless::teacher_forward"):
        with teacher_autocast(lwf.teacher_precision, student):
            t_out = forward.hidden(base, part)
            t_states = t_out.states[at]
            head_trained = t_out.head is not None and any(p.requires_grad for p in t_out.head.parameters())
            if head_trained:
                t_states = torch.cat([t_out.head(t_states[s : s + chunk]) for s in range(0, t_states.shape[0], chunk)])
        t_states = t_states.to(student.dtype)  # the KL in the model's own precision
    teacher_head = None if (t_out.head is None or head_trained) else t_out.head
    with record_function("forgetless::kl"):
        if teacher_head is not None and out.head is teacher_head and frozen_linear(teacher_head):
            return kl_sum_fused(student, t_states, teacher_head, lwf.temperature, lwf.direction, chunk)
        return kl_sum_chunked(student, t_states, lwf.temperature, lwf.direction, out.head, teacher_head, chunk)


def teacher_autocast(precision: str, like: torch.Tensor):
    """The online teacher's forward under bf16 autocast (lwf.teacher_precision): `bf16` always, `auto` for an
    fp32 model on a CPU with hardware bf16 matmuls; otherwise no change. Only the teacher's side: the student
    trains in its own precision, and the KL is taken in it."""
    bf16 = precision == "bf16" or (
        precision == "auto" and like.dtype == torch.float32 and like.device.type == "cpu" and hardware.cpu_bf16_native()
    )
    return torch.autocast(like.device.type, dtype=torch.bfloat16, enabled=bf16)


def _cached_kl(teacher: TeacherCache, batch, out: forward.Outputs, student, where, lwf, chunk: int):
    """The KL against the cached top-k teacher: no teacher forward pass; through a frozen head, its gradient
    made in the forward pass (`kl_topk_sum_fused`)."""
    idx, logp, tail = (t[where] for t in teacher.lookup(batch))
    if out.head is not None and frozen_linear(out.head):
        with record_function("forgetless::kl"):
            return kl_topk_sum_fused(student, idx, logp, tail, out.head, lwf.temperature, lwf.direction, chunk)

    def term(s, i, lp, tl):
        logits = s if out.head is None else out.head(s)
        return kl_topk_sum(logits, i, lp, tl, lwf.temperature, lwf.direction)

    with record_function("forgetless::kl"):
        return chunked_sum(term, chunk, student, idx, logp, tail)


@dataclass
class Controller:
    """A forgetting budget held during training: the adaptive KL controller of Ziegler et al. (2019), which
    PPO implementations use for their KL coefficient, here on the weight of a forgetting term.

    After each probe measurement the weight is multiplied by exp(e · steps / horizon), with the error
    e = clip(log(measured / target), −1, 1): above the budget it rises, below it falls, symmetrically on a
    log scale (the proportional form 1 + clip(KL/target − 1) lowers more slowly than it raises). The
    weight stays within [low, high] so a long stretch on one side cannot run it off to 0 or ∞.

    It engages when a probe first reaches the target: before that the KL is small because little has been
    learned yet, not because there is room, and lowering the weight then only speeds the drift that follows
    (measured on validation rows: docs/forgetting.md). A budget never reached leaves the weight as set.

    With `lookahead` > 0 the error is taken at the KL the trend of the last two probes reaches that many
    probes ahead (a derivative term): a KL above the budget but falling fast stops raising the weight
    before it undershoots. The purely proportional form kept raising it while the KL fell, and with the
    learning rate decaying the KL never came back up: runs ended at half their budget. With `hold` a KL
    above the budget but lower than at the previous probe leaves the weight as it is (conditional
    integration, the usual anti-windup of PI controllers): the weight only rises while the KL is over the
    budget and not yet coming back, and falls as soon as it is under."""

    target: float
    weight: float
    horizon: float
    low: float = 1e-3
    high: float = 1e3
    engaged: bool = False
    lookahead: float = 0.0
    last: float | None = None  # the previous probe's KL
    hold: bool = False

    def update(self, measured: float, steps: int) -> float:
        self.engaged = self.engaged or measured >= self.target
        expected, last = measured, self.last
        if self.lookahead and last is not None:  # the trend carried forward, never below a quarter of now
            expected = max(measured + self.lookahead * (measured - last), measured / 4)
        self.last = measured
        if not self.engaged:
            return self.weight
        error = max(-1.0, min(1.0, math.log(max(expected, 1e-12) / self.target)))
        if self.hold and error > 0 and last is not None and measured < last:
            return self.weight
        self.weight = min(self.high, max(self.low, self.weight * math.exp(error * steps / self.horizon)))
        return self.weight
