"""Loss functions as pure maths: tensors in, tensor out. Tested against hand-computed values.

Losses return *sums* over the positions that count; the training loop divides by the number
of target tokens in the whole optimizer step, so gradient accumulation and several processes
give the same token-mean as one big batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from forgetless.model.likelihood import IGNORE, soften  # the shared cross-entropy


def kl_of_log_probs(log_s: torch.Tensor, log_t: torch.Tensor, direction: str) -> torch.Tensor:
    """Per-row KL between distributions given as log-probabilities, in the chosen direction."""
    if direction == "finetuned_base":
        return (log_s.exp() * (log_s - log_t)).sum(-1)
    if direction == "base_finetuned":
        return (log_t.exp() * (log_t - log_s)).sum(-1)
    raise ValueError(f"unknown KL direction {direction!r}")


def kl_sum(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, direction: str = "finetuned_base"):
    """Sum over rows of KL between the next-token distributions of (N, V) logits, times T².

    finetuned_base: KL(p_student ‖ p_teacher) = Σ p_s (log p_s − log p_t)   (the product default)
    base_finetuned: KL(p_teacher ‖ p_student) = Σ p_t (log p_t − log p_s)   (classic distillation)
    Both are computed on temperature-softened distributions and scaled by T² so that the gradient
    size does not shrink as T grows (Hinton et al. 2015). Only the rows passed in are converted to
    float32: callers select the positions that count before calling.
    """
    return kl_rows(student, teacher, temperature, direction).sum() * temperature**2


def kl_rows(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, direction: str = "finetuned_base"):
    """`kl_sum`'s terms: the KL of each row, before the sum and the T² factor."""
    log_s = F.log_softmax(soften(student, temperature), dim=-1)
    log_t = F.log_softmax(soften(teacher, temperature), dim=-1)
    return kl_of_log_probs(log_s, log_t, direction)


def chunked_sum(term, chunk: int, *rows: torch.Tensor) -> torch.Tensor:
    """Σ term(*slices) over slices of at most `chunk` rows of the given (N, ...) tensors.

    With more than one slice, each slice runs under activation checkpointing: its vocabulary-wide
    float32 intermediates are freed after the forward pass and recomputed in backward, so peak
    memory holds one slice's logits, not N rows'. One slice is computed directly (no recompute).
    """
    n = rows[0].shape[0]
    if n <= chunk or not torch.is_grad_enabled():
        return torch.stack([term(*(t[s : s + chunk] for t in rows)) for s in range(0, max(n, 1), chunk)]).sum()
    parts = [checkpoint(term, *(t[s : s + chunk] for t in rows), use_reentrant=False) for s in range(0, n, chunk)]
    return torch.stack(parts).sum()


def ce_sum_chunked(states: torch.Tensor, targets: torch.Tensor, head=None, chunk: int = 1024) -> torch.Tensor:
    """`ce_sum` on (N, H) hidden states of the selected positions: the (N, V) logits are made by
    `head` one slice at a time (head None: `states` already are logits)."""

    def term(s, t):
        logits = s if head is None else head(s)
        return F.cross_entropy(logits.float(), t, reduction="sum")

    return chunked_sum(term, chunk, states, targets)


def kl_sum_chunked(
    states: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float = 1.0,
    direction: str = "finetuned_base",
    head=None,
    teacher_head=None,
    chunk: int = 1024,
) -> torch.Tensor:
    """`kl_sum` on (N, H) student hidden states and (N, H) teacher hidden states (or logits when the
    head is None), a slice at a time. The teacher's head runs without gradient."""

    def term(s, t):
        if teacher_head is not None:
            with torch.no_grad():
                t = teacher_head(t)
        return kl_sum(s if head is None else head(s), t, temperature, direction)

    return chunked_sum(term, chunk, states, teacher)


def kl_topk_sum(
    student: torch.Tensor,
    teacher_idx: torch.Tensor,
    teacher_logp: torch.Tensor,
    teacher_tail: torch.Tensor,
    temperature: float = 1.0,
    direction: str = "finetuned_base",
) -> torch.Tensor:
    """`kl_sum` against a cached teacher that kept only its top-k tokens per position.

    Both distributions are coarsened to k + 1 outcomes: the teacher's k most likely tokens and
    "any other token" (the tail, mass 1 − Σ top-k). student: (N, V) logits; teacher_idx/logp:
    (N, k) token ids and log-probabilities at `temperature`; teacher_tail: (N,) log of the tail
    mass. The coarsened KL never exceeds the exact one (data-processing inequality) and equals it
    when the tails agree token by token; docs/performance.md measures the gap.
    """
    log_s_full = F.log_softmax(soften(student, temperature), dim=-1)
    log_s = log_s_full.gather(-1, teacher_idx.long())
    # log(1 − Σ p_k), computed stably; clamp keeps it finite when the top-k hold all the mass.
    s_tail = torch.log1p(-log_s.exp().sum(-1).clamp(max=1 - 1e-6))
    log_s = torch.cat([log_s, s_tail[:, None]], dim=-1)
    log_t = torch.cat([teacher_logp.float(), teacher_tail.float()[:, None]], dim=-1)
    return kl_of_log_probs(log_s, log_t, direction).sum() * temperature**2


def l2_penalty(params: list[torch.Tensor], initial: list[torch.Tensor]) -> torch.Tensor:
    """Σ (θ − θ₀)² over all given tensors: how far the trainable weights moved from their start."""
    return sum(((p - p0) ** 2).sum() for p, p0 in zip(params, initial, strict=True))


def ewc_penalty(params: list[torch.Tensor], initial: list[torch.Tensor], fisher: list[torch.Tensor]) -> torch.Tensor:
    """Σ F·(θ − θ₀)² with a diagonal Fisher F (Kirkpatrick et al. 2017), without the ½ of the paper:
    λ_ewc in the config multiplies this sum as written in forgetless's docs."""
    return sum((f * (p - p0) ** 2).sum() for p, p0, f in zip(params, initial, fisher, strict=True))


def batch_seed(batch: dict) -> int:
    """A seed from a micro-batch's tokens: the sampled KL positions are the same when a run resumes."""
    ids = batch["input_ids"].long()
    return int((ids * torch.arange(1, ids.numel() + 1, device=ids.device).view_as(ids)).sum()) % 2**62


def sample_positions(where: torch.Tensor, share: float, seed: int) -> torch.Tensor:
    """`where` with each position kept with probability `share` (independently, seeded): Σ over the kept
    positions / share is an unbiased estimate of Σ over all of them."""
    if share >= 1:
        return where
    g = torch.Generator().manual_seed(seed)
    return where & (torch.rand(where.shape, generator=g) < share).to(where.device)


def position_masks(
    labels: torch.Tensor,
    attention_mask: torch.Tensor,
    rehearsal: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    replay: torch.Tensor | None = None,
) -> dict:
    """Boolean (B, T-1) masks over shifted positions (position t predicts token t+1).

    task_answers: targets of the task loss; rehearsal_answers: targets of the rehearsal CE;
    context: task rows' real tokens that are not answers; rehearsal: every real token of a
    rehearsal row. The KL term picks its positions from the last three plus task_answers.
    `rehearsal` is per row (B,) or, in packed batches, per token (B, T). In packed batches
    (`position_ids` given) a token at position 0 starts a new row: predicting it from the
    previous row's last token counts for nothing. `replay` (shaped like `rehearsal`) marks earlier
    runs' training rows: replayed_answers are their targets (a part of rehearsal_answers).
    """
    real = attention_mask[:, 1:].bool()
    if position_ids is not None:
        real = real & (position_ids[:, 1:] != 0)
    answer = (labels[:, 1:] != IGNORE) & real
    reh = rehearsal.bool()
    reh = reh[:, None].expand_as(answer) if reh.dim() == 1 else reh[:, 1:]
    if replay is None:
        rep = torch.zeros_like(answer)
    else:
        rep = replay.bool()
        rep = rep[:, None].expand_as(answer) if rep.dim() == 1 else rep[:, 1:]
    return {
        "task_answers": answer & ~reh,
        "rehearsal_answers": answer & reh,
        "replayed_answers": answer & reh & rep,
        "context": real & ~answer & ~reh,
        "rehearsal": real & reh,
    }


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its label tokens, and how many there are. (B,) each."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = labels[:, 1:]
    mask = targets != IGNORE
    token = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token * mask).sum(-1), mask.sum(-1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    kind: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss and the implicit rewards β·log(π/π_ref) of the chosen and rejected answers.

    h = (log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r))
    sigmoid (Rafailov et al. 2023): −log σ(β·h)
    ipo     (Azar et al. 2023):      (h − 1/(2β))²   (pass length-averaged log-probabilities, as the paper does)
    """
    chosen = policy_chosen - ref_chosen
    rejected = policy_rejected - ref_rejected
    h = chosen - rejected
    if kind == "sigmoid":
        loss = -F.logsigmoid(beta * h)
    elif kind == "ipo":
        loss = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {kind!r}")
    return loss, beta * chosen.detach(), beta * rejected.detach()


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair −log σ(r_c − r_r): the negative log-likelihood that the chosen answer wins."""
    return -F.logsigmoid(chosen - rejected)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over (B, T) per-token rewards and values; positions with
    mask 0 (padding after the answer) contribute nothing. Returns (advantages, returns)."""
    mask = mask.to(values.dtype)
    zero = torch.zeros_like(values[:, :1])
    next_value = torch.cat([values[:, 1:] * mask[:, 1:], zero], dim=1)  # V(t+1), 0 after the answer
    next_live = torch.cat([mask[:, 1:], zero], dim=1)
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value[:, t] - values[:, t]
        running = (delta + gamma * lam * next_live[:, t] * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def ppo_losses(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    value_clip: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over the masked (answer) tokens of PPO's clipped policy loss and clipped value loss
    (Schulman et al. 2017): policy −min(ρA, clip(ρ, 1±ε)A) with ρ = exp(logp − old_logp);
    value ½·max((V − R)², (clip(V, V_old ± ε_v) − R)²)."""
    ratio = torch.exp(logp - old_logp)
    policy = -torch.min(ratio * advantages, torch.clamp(ratio, 1 - clip, 1 + clip) * advantages)
    clipped = old_values + torch.clamp(values - old_values, -value_clip, value_clip)
    value = 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2)
    return (policy * mask).sum(), (value * mask).sum()


def grpo_losses(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
    per_row_tokens: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(policy loss, KL) summed over answers, each answer's per-token values summed and divided by
    `per_row_tokens` (its own token count: GRPO; a constant, max_new_tokens: Dr. GRPO). Per token: the
    clipped surrogate −min(ρA, clip(ρ, 1±ε)A) with ρ = π/π_old, and the k3 estimate of KL(π ‖ π_ref),
    exp(ref − logp) − (ref − logp) − 1 ≥ 0 (DeepSeekMath). (B, T) tensors; `advantages` (B,)."""
    adv = advantages.unsqueeze(-1)
    ratio = torch.exp(logp - old_logp)
    surrogate = -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    delta = ref_logp - logp
    kl = torch.exp(delta) - delta - 1
    return (surrogate * mask).sum(-1).div(per_row_tokens).sum(), (kl * mask).sum(-1).div(per_row_tokens).sum()
