"""The training objective: task cross-entropy plus the forgetting terms the config turns on.

    loss = CE(task answers)                          token-mean over the task answer tokens
         + the forgetting terms                      objectives/forgetting.py: rehearsal CE, λ·T²·KL
                                                     to the base, L2 / EWC

Each CE is a mean over its own tokens, so long general answers in the rehearsal rows do not
dilute the task signal (the quickstart's task answers are ~15 tokens, the base model's general
answers ~90). Only the selected positions' logits are turned into float32 distributions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.profiler import record_function

from forgetless.config.schema import ForgettingConfig
from forgetless.model import forward
from forgetless.objectives import forgetting
from forgetless.objectives.forgetting import Weights, counts, kl_positions, masks_of
from forgetless.objectives.losses import ce_sum_chunked
from forgetless.objectives.objective import Objective

if TYPE_CHECKING:  # types only: reference/ builds these from the base model and imports objectives/losses
    from forgetless.reference.fisher import Anchor
    from forgetless.reference.topk import TeacherCache

__all__ = ["counts", "kl_positions", "masks_of", "objective"]


def objective(
    cfg: ForgettingConfig,
    anchor: Anchor | None = None,
    teacher: TeacherCache | None = None,
    chunk: int = 1024,
    weights: Weights | None = None,
) -> Objective:
    """The SFT objective for `loop.fit`: the terms above, each logged separately, with their units
    (`counts`): targets, rehearsal answer tokens, KL positions, micro-batches.

    The output head runs only on the positions a term counts, `chunk` positions at a time
    (`forward.hidden`); with `teacher` (a cached top-k teacher) there is no teacher forward pass.
    `weights`: the forgetting terms' weights when a budget's controller moves them (else the config's).
    """
    w = weights if weights is not None else Weights.of(cfg)

    def loss_fn(model, batch: dict, norms: dict[str, float]) -> dict[str, torch.Tensor]:
        masks = masks_of(batch)
        with record_function("forgetless::forward"):  # the regions of `train.profile_steps` (training/profile.py)
            out = forward.hidden(model, batch)
        states, targets = out.states[:, :-1], batch["labels"][:, 1:]
        mask = masks["task_answers"]
        with record_function("forgetless::ce"):
            ce = ce_sum_chunked(states[mask], targets[mask], out.head, chunk)
        terms = {"ce": ce / norms["targets"]}
        return terms | forgetting.terms(model, batch, out, masks, norms, cfg, w, (anchor, teacher, chunk))

    return Objective(loss_fn, lambda batch: counts(batch, cfg))
