"""Loss functions as pure maths: tensors in, tensor out. Tested against hand-computed values.

Losses return *sums* over the positions that count; the training loop divides by the number
of target tokens in the whole optimizer step, so gradient accumulation and several processes
give the same token-mean as one big batch.
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
