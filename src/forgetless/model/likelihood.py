"""A model's next-token likelihood of labelled tokens: the one cross-entropy every part counts with.

Labels mark the positions without a loss with IGNORE (PyTorch's and transformers' `ignore_index`
default, so a model's own `labels=` loss agrees). data/render.py writes them, the losses
(objectives/losses.py), the evaluation and the paraphrase filter read them; they live here, below all
of those, so that none of them imports upward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align position t's prediction with token t+1 and flatten: (N, V) logits, (N,) targets."""
    return logits[:, :-1, :].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1)


def count_targets(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != IGNORE).sum())


def ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token cross-entropy over positions whose label is not IGNORE."""
    flat_logits, targets = shift(logits, labels)
    return F.cross_entropy(flat_logits.float(), targets, ignore_index=IGNORE, reduction="sum")


def soften(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """float32 logits / T; at T = 1 no division (a full pass over a vocabulary-wide tensor and its
    backward, measurable in the LwF step)."""
    logits = logits.float()
    return logits if temperature == 1 else logits / temperature
