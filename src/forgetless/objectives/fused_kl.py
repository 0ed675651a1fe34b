"""The KL terms through a frozen linear output head, with their gradient made in the forward pass.

When the output head is a frozen linear map (LoRA and the other adapters), the gradient of a KL with
respect to the student's logits has a closed form. Per slice of rows: the student's logits (one matmul),
their log-softmax, the KL and its gradient with respect to the logits, taken straight back through the head
into an (N, H) gradient of the hidden states, the only tensor kept for backward. The plain path
(`losses.kl_sum_chunked`, `losses.kl_topk_sum` under `chunked_sum`) saves the vocabulary-wide intermediates
or, over several slices, recomputes the slice's head and softmaxes in backward (activation checkpointing).

Two teachers, one loop (`_FusedHead`), each with its closed form at z = logits / T, p = softmax(z_student),
the KL scaled by T² (so d/dlogits = T · d/dz):

- the online teacher's hidden states (`kl_sum_fused`), through the same head, q = softmax(z_teacher):
    finetuned_base  KL(p‖q): d/dz = p ⊙ (log p − log q − KL_row)
    base_finetuned  KL(q‖p): d/dz = p − q
  3 head matmuls per slice here against 5 on the checkpointed path.
- the cached top-k teacher (`kl_topk_sum_fused`): both distributions coarsened to the teacher's k tokens
  and "any other token" (c(v) is token v's outcome, s and t the coarse student and teacher probabilities):
    finetuned_base  KL(s‖t): d/dz_v = p_v (log s_c(v) − log t_c(v) − KL_row)
    base_finetuned  KL(t‖s): d/dz_v = p_v (1 − t_c(v) / s_c(v))   (p_v − t_v on the top-k tokens)
  2 head matmuls per slice against 3 (4 over several slices), and one vocabulary-wide tensor.

Within a slice, the vocabulary-wide tensors are updated in place where nothing reads them again: each new
one is an allocation of N × V floats (200 MB at 1,024 × 49,152), and the same operations in place give the
same bits. Equal to the plain paths within float tolerance, value and gradient (tests/objectives/test_losses.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from forgetless.model.likelihood import soften


def frozen_linear(head) -> bool:
    """Whether `head` is a plain linear map with no trainable parameter (what the fused KLs need)."""
    return type(head) is torch.nn.Linear and not any(p.requires_grad for p in head.parameters())


class _FusedHead(torch.autograd.Function):
    """Σ over rows of a KL through a frozen linear head; `form(log_p, *teacher_slices)` gives a slice's per-row
    KL and its gradient with respect to z (computed in place over log_p's storage where it can)."""

    @staticmethod
    def forward(ctx, states, weight, bias, temperature, chunk, with_grad, form, *teacher):
        ctx.teachers = len(teacher)  # backward returns one None for each
        total = torch.zeros((), dtype=torch.float32, device=states.device)
        grad = torch.empty_like(states) if with_grad else None
        for s in range(0, states.shape[0], chunk):
            log_p = F.log_softmax(soften(F.linear(states[s : s + chunk], weight, bias), temperature), dim=-1)
            rows, d_z = form(log_p, *(t[s : s + chunk] for t in teacher))
            total += rows.sum()
            if with_grad:  # no gradient matmul for a value taken under no_grad (validation)
                if temperature != 1:
                    d_z.mul_(temperature)
                grad[s : s + chunk] = (d_z.to(weight.dtype) @ weight).to(states.dtype)
        if with_grad:
            ctx.save_for_backward(grad)
        return total * temperature**2

    @staticmethod
    def backward(ctx, upstream):
        (grad,) = ctx.saved_tensors
        return grad * upstream.to(grad.dtype), None, None, None, None, None, None, *([None] * ctx.teachers)


def _apply(states, head: torch.nn.Linear, temperature: float, direction: str, chunk: int, form, *teacher):
    if direction not in ("finetuned_base", "base_finetuned"):
        raise ValueError(f"unknown KL direction {direction!r}")
    weight, bias = head.weight.detach(), None if head.bias is None else head.bias.detach()
    with_grad = torch.is_grad_enabled() and states.requires_grad
    return _FusedHead.apply(states, weight, bias, temperature, chunk, with_grad, form, *(t.detach() for t in teacher))


def kl_sum_fused(
    states: torch.Tensor,
    teacher_states: torch.Tensor,
    head: torch.nn.Linear,
    temperature: float = 1.0,
    direction: str = "finetuned_base",
    chunk: int = 1024,
) -> torch.Tensor:
    """`losses.kl_sum_chunked` with a frozen linear head for both sides (`frozen_linear`), in one pass per
    slice: equal to it within float tolerance, value and gradient (tested)."""
    weight, bias = head.weight.detach(), None if head.bias is None else head.bias.detach()

    def form(log_p, t_states):
        log_q = F.log_softmax(soften(F.linear(t_states, weight, bias), temperature), dim=-1)
        p = log_p.exp()
        if direction == "finetuned_base":
            diff = torch.sub(log_p, log_q, out=log_q)
            rows = (p * diff).sum(-1)
            return rows, diff.sub_(rows[:, None]).mul_(p)
        q = log_q.exp()
        rows = (q * log_q.sub_(log_p)).sum(-1)
        return rows, p.sub_(q)

    return _apply(states, head, temperature, direction, chunk, form, teacher_states)


def kl_topk_sum_fused(
    states: torch.Tensor,
    teacher_idx: torch.Tensor,
    teacher_logp: torch.Tensor,
    teacher_tail: torch.Tensor,
    head: torch.nn.Linear,
    temperature: float = 1.0,
    direction: str = "finetuned_base",
    chunk: int = 1024,
) -> torch.Tensor:
    """`losses.kl_topk_sum` over (N, H) hidden states through a frozen linear head, in one pass per slice:
    equal to it within float tolerance, value and gradient (tested)."""

    def form(log_p, idx, logp, tail):
        idx = idx.long()
        log_top = log_p.gather(-1, idx)  # the student's log-probabilities of the teacher's k tokens
        p = log_p.exp_()  # log_p is not read again
        s_top = log_top.exp()
        log_s = torch.cat([log_top, torch.log1p(-s_top.sum(-1).clamp(max=1 - 1e-6))[:, None]], dim=-1)
        log_t = torch.cat([logp.float(), tail.float()[:, None]], dim=-1)
        if direction == "finetuned_base":
            g = log_s - log_t
            rows = (log_s.exp() * g).sum(-1)
            coef = g - rows[:, None]
        else:
            rows = (log_t.exp() * (log_t - log_s)).sum(-1)
            coef = 1 - (log_t - log_s).exp()
        d_z = p.mul_(coef[:, -1:])  # every token as "the rest" first ...
        return rows, d_z.scatter_(-1, idx, s_top * coef[:, :-1])  # ... then the teacher's k tokens

    return _apply(states, head, temperature, direction, chunk, form, teacher_idx, teacher_logp, teacher_tail)
