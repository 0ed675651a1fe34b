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


def kl_sum(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, direction: str = "finetuned_base"):
    """Sum over rows of KL between the next-token distributions of (N, V) logits, times T².

    finetuned_base: KL(p_student ‖ p_teacher) = Σ p_s (log p_s − log p_t)   (the product default)
    base_finetuned: KL(p_teacher ‖ p_student) = Σ p_t (log p_t − log p_s)   (classic distillation)
    Both are computed on temperature-softened distributions and scaled by T² so that the gradient
    size does not shrink as T grows (Hinton et al. 2015). Only the rows passed in are converted to
    float32: callers select the positions that count before calling.
    """
    log_s = F.log_softmax(student.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher.float() / temperature, dim=-1)
    if direction == "finetuned_base":
        per_row = (log_s.exp() * (log_s - log_t)).sum(-1)
    elif direction == "base_finetuned":
        per_row = (log_t.exp() * (log_t - log_s)).sum(-1)
    else:
        raise ValueError(f"unknown KL direction {direction!r}")
    return per_row.sum() * temperature**2


def l2_penalty(params: list[torch.Tensor], initial: list[torch.Tensor]) -> torch.Tensor:
    """Σ (θ − θ₀)² over all given tensors: how far the trainable weights moved from their start."""
    return sum(((p - p0) ** 2).sum() for p, p0 in zip(params, initial, strict=True))


def ewc_penalty(params: list[torch.Tensor], initial: list[torch.Tensor], fisher: list[torch.Tensor]) -> torch.Tensor:
    """Σ F·(θ − θ₀)² with a diagonal Fisher F (Kirkpatrick et al. 2017), without the ½ of the paper:
    λ_ewc in the config multiplies this sum as written in forgetless's docs."""
    return sum((f * (p - p0) ** 2).sum() for p, p0, f in zip(params, initial, fisher, strict=True))


def position_masks(labels: torch.Tensor, attention_mask: torch.Tensor, rehearsal: torch.Tensor) -> dict:
    """Boolean (B, T-1) masks over shifted positions (position t predicts token t+1).

    task_answers: targets of the task loss; rehearsal_answers: targets of the rehearsal CE;
    context: task rows' real tokens that are not answers; rehearsal: every real token of a
    rehearsal row. The KL term picks its positions from the last three plus task_answers.
    """
    real = attention_mask[:, 1:].bool()
    answer = labels[:, 1:] != IGNORE
    reh = rehearsal.bool()[:, None].expand_as(answer)
    return {
        "task_answers": answer & ~reh,
        "rehearsal_answers": answer & reh,
        "context": real & ~answer & ~reh,
        "rehearsal": real & reh,
    }
