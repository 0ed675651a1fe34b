"""The LwF teacher's forward pass in fp32 and under bf16 autocast (forgetting.lwf.teacher_precision): seconds
per forward of 4 × 256 random tokens through the embedded model, and the KL(p_fp32 ‖ p_bf16) per token between
the two teachers' next-token distributions (the rounding floor a bf16 teacher puts under the LwF term).

Run: python benchmarks/teacher_precision.py [--reps 3]   (about a minute on 2 CPU cores; prints, writes nothing)
"""

from __future__ import annotations

import argparse
import time

import machine  # benchmarks/machine.py: the CPU the numbers come from
import torch
from transformers import AutoModelForCausalLM

from forgetless.model import forward
from forgetless.model import loader as models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(models.resolve("smollm2-135m-instruct"), dtype=torch.float32).eval()
    ids = torch.randint(0, model.config.vocab_size, (4, 256))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def states(bf16: bool) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return forward.hidden(model, batch).states.float()

    seconds = {}
    for bf16 in (False, True):
        states(bf16)  # warm-up
        start = time.perf_counter()
        for _ in range(args.reps):
            states(bf16)
        seconds["bf16" if bf16 else "fp32"] = (time.perf_counter() - start) / args.reps
    head = model.get_output_embeddings()
    with torch.no_grad():
        exact, rounded = (torch.log_softmax(head(states(bf16)), -1) for bf16 in (False, True))
        kl = (exact.exp() * (exact - rounded)).sum(-1)
    print(f"machine: {machine.line(machine.describe())}")
    print(f"teacher forward, 4 x 256 tokens: fp32 {seconds['fp32']:.2f} s, bf16 {seconds['bf16']:.2f} s "
          f"({seconds['fp32'] / seconds['bf16']:.2f}x)")  # fmt: skip
    print(f"KL(fp32 teacher || bf16 teacher) per token: mean {kl.mean():.2e}, max {kl.max():.2e}")


if __name__ == "__main__":
    main()
