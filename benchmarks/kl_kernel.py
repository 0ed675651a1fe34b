"""The LwF KL term alone: the plain chunked computation against the fused one, and sampled positions.

Times forward + backward of Σ KL(student ‖ teacher) through the output head of the embedded model's
shape (hidden 576, vocabulary 49,152: SmolLM2-135M, where the head is a fifth of a forward pass), on
N KL positions of one micro-batch, `train.loss_chunk` 1024 positions per chunk:
  plain   losses.kl_sum_chunked: autograd through head, log-softmaxes and KL; over several chunks each
          chunk is checkpointed (its head and softmaxes recomputed in backward)
  fused   fused_kl.kl_sum_fused: the gradient made in the forward pass, no recompute
  fused, positions=S   the fused term on a random share S of the positions (forgetting.lwf.positions)
  cached plain / cached fused   the KL against the cached top-k teacher (k = 32, the default):
          losses.kl_topk_sum under chunked_sum (autograd, checkpointed over several chunks) against
          fused_kl.kl_topk_sum_fused (the gradient made in the forward pass)
Reported: the best of --repeats timings per case, and each case's time as a ratio of plain's in the same
run. Values agree to float tolerance (asserted here, tested in tests/objectives/test_losses.py).

Run: python benchmarks/kl_kernel.py [--positions 700 1100 2500] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch
import torch.nn.functional as F

from forgetless.objectives.fused_kl import kl_sum_fused, kl_topk_sum_fused
from forgetless.objectives.losses import chunked_sum, kl_sum_chunked, kl_topk_sum, sample_positions

HIDDEN, VOCAB, CHUNK, TOP_K = 576, 49_152, 1024, 32


def timed(fn, states: torch.Tensor, repeats: int) -> tuple[float, float, torch.Tensor]:
    """Best wall time of forward + backward, the value and the gradient of the states."""
    best = float("inf")
    for _ in range(repeats):
        s = states.clone().requires_grad_(True)
        start = time.perf_counter()
        value = fn(s)
        value.backward()
        best = min(best, time.perf_counter() - start)
    return best, float(value.detach()), s.grad


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, nargs="+", default=[700, 1100, 2500], help="KL positions per micro-batch")
    ap.add_argument("--shares", type=float, nargs="+", default=[0.5, 0.25], help="forgetting.lwf.positions values")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    head = torch.nn.Linear(HIDDEN, VOCAB, bias=False).requires_grad_(False)
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    print("| KL positions | chunks | case | s (fwd + bwd) | vs plain |")
    print("|---|---|---|---|---|")
    for n in args.positions:
        states, teacher = torch.randn(n, HIDDEN) * 0.5, torch.randn(n, HIDDEN) * 0.5
        plain_s, plain_v, plain_g = timed(
            lambda s, t=teacher: kl_sum_chunked(s, t, 1.0, "finetuned_base", head, head, CHUNK), states, args.repeats
        )
        fused_s, fused_v, fused_g = timed(
            lambda s, t=teacher: kl_sum_fused(s, t, head, 1.0, "finetuned_base", CHUNK), states, args.repeats
        )
        assert abs(fused_v - plain_v) <= 1e-4 * abs(plain_v) and torch.allclose(fused_g, plain_g, rtol=1e-3, atol=1e-6)
        chunks = -(-n // CHUNK)
        print(f"| {n} | {chunks} | plain | {plain_s:.3f} | 1.00 |")
        print(f"| {n} | {chunks} | fused | {fused_s:.3f} | {fused_s / plain_s:.2f} |")
        for share in args.shares:
            keep = sample_positions(torch.ones(n, dtype=torch.bool), share, seed=n)

            def sampled(s, keep=keep, share=share, t=teacher):
                return kl_sum_fused(s[keep], t[keep], head, 1.0, "finetuned_base", CHUNK) / share

            t, _, _ = timed(sampled, states, args.repeats)
            print(f"| {n} | {chunks} | fused, positions={share} | {t:.3f} | {t / plain_s:.2f} |")
        cached_plain, cached_fused = cached(head, states, teacher, args.repeats)
        print(f"| {n} | {chunks} | cached plain | {cached_plain:.3f} | {cached_plain / plain_s:.2f} |")
        print(f"| {n} | {chunks} | cached fused | {cached_fused:.3f} | {cached_fused / plain_s:.2f} |")


def cached(head, states: torch.Tensor, teacher: torch.Tensor, repeats: int) -> tuple[float, float]:
    """The KL against a top-k cache of the teacher's distribution: the plain and the fused term's times."""
    with torch.no_grad():
        top, idx = F.log_softmax(head(teacher), -1).topk(TOP_K)
        tail = torch.log1p(-top.exp().sum(-1).clamp(max=1 - 1e-6))
    idx, top = idx.int(), top.half()  # as the cache stores them

    def plain(s):
        return chunked_sum(lambda a, i, lp, tl: kl_topk_sum(head(a), i, lp, tl), CHUNK, s, idx, top, tail)

    plain_s, plain_v, plain_g = timed(plain, states, repeats)

    def fused(s):
        return kl_topk_sum_fused(s, idx, top, tail, head, chunk=CHUNK)

    fused_s, fused_v, fused_g = timed(fused, states, repeats)
    assert abs(fused_v - plain_v) <= 1e-4 * abs(plain_v) and torch.allclose(fused_g, plain_g, rtol=1e-3, atol=1e-6)
    return plain_s, fused_s


if __name__ == "__main__":
    main(sys.argv[1:])
