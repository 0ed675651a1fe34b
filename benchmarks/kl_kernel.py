"""The LwF KL term alone: the plain chunked computation against the fused one, and sampled positions.

Times forward + backward of Σ KL(student ‖ teacher) through the output head of the embedded model's
shape (hidden 576, vocabulary 49,152: SmolLM2-135M, where the head is a fifth of a forward pass), on
N KL positions of one micro-batch, `train.loss_chunk` 1024 positions per chunk:
  plain   losses.kl_sum_chunked: autograd through head, log-softmaxes and KL; over several chunks each
          chunk is checkpointed (its head and softmaxes recomputed in backward)
  fused   losses.kl_sum_fused: the gradient made in the forward pass, no recompute
  fused, positions=S   the fused term on a random share S of the positions (forgetting.lwf.positions)
Reported: the best of --repeats timings per case, and each case's time as a ratio of plain's in the same
run. Values agree to float tolerance (asserted here, tested in tests/objectives/test_losses.py).

Run: python benchmarks/kl_kernel.py [--positions 900 2500] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

from forgetless.objectives.losses import kl_sum_chunked, kl_sum_fused, sample_positions

HIDDEN, VOCAB, CHUNK = 576, 49_152, 1024


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
    ap.add_argument("--positions", type=int, nargs="+", default=[900, 2500], help="KL positions per micro-batch")
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


if __name__ == "__main__":
    main(sys.argv[1:])
