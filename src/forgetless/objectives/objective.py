"""What a recipe hands the training loop: a loss function and the units it is normalised by, as one object.

    count(batch) -> {unit: n}         how many of each unit (target tokens, pairs, KL positions, ...)
                                      one micro-batch holds
    loss(model, batch, norms) -> {term: tensor}, or ({term: tensor}, {metric: value})
                                      each term is a sum over its unit divided by norms[unit], the
                                      number of that unit in the whole optimizer step (per process)

The loop adds up the counts of a step's micro-batches, hands them to every loss call, and sums the
terms, so a term is a mean over its unit across the step however the rows fall into micro-batches.
The two functions name the same units; making them together, in one function of one objectives/
module, keeps those names from drifting apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from forgetless.model.likelihood import count_targets

Terms = dict[str, torch.Tensor]
LossFn = Callable[[torch.nn.Module, dict, dict[str, float]], Terms | tuple[Terms, Terms]]
CountFn = Callable[[dict], dict[str, int]]


def target_tokens(batch: dict) -> dict[str, int]:
    """The plain unit: target (answer) tokens; `batches` (micro-batches) normalises per-step penalties."""
    return {"targets": count_targets(batch["labels"]), "batches": 1}


@dataclass(frozen=True)
class Objective:
    loss: LossFn
    count: CountFn = target_tokens
