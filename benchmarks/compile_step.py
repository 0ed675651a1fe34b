"""One lever of issue 40 measured: `torch.compile` (inductor) of the LoRA training step on CPU, against eager.

The step is forgetless's LoRA step on speed.py's uniform rows: the embedded SmolLM2-135M-Instruct in fp32,
LoRA r 8 / alpha 16 / dropout 0.05 on every linear layer (forgetless's defaults, `attaching.attach`), 4 rows
of 256 random tokens, the lean CE (`forward.hidden`, then `losses.ce_sum_chunked` through the head), backward,
AdamW. The compiled case compiles the decoder (the adapted layers inside it); the head's CE stays eager, as
in the loop. Reported: the first step (for the compiled case: compilation included), the median of the
measured steps, their ratio, and dynamo's graph and graph-break counts (a break splits the fused graph).

Run: python benchmarks/compile_step.py [--steps 4] [--out docs/compile_step.json]
(about 3 minutes on 2 CPU cores, 2 of them compiling; run it alone on the machine)
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import machine  # benchmarks/machine.py: the CPU the numbers come from
import outputs  # benchmarks/outputs.py: every file written whole
import torch
from transformers import AutoModelForCausalLM

from forgetless.adapters import attaching
from forgetless.config.schema import PeftConfig
from forgetless.model import forward
from forgetless.model import loader as models
from forgetless.objectives import losses


def measure(compiled: bool, steps: int) -> dict:
    """Seconds of the first step and of `steps` more, on a fresh model (same seed, same rows)."""
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(models.resolve("smollm2-135m-instruct"), dtype=torch.float32)
    model = attaching.attach(base, PeftConfig(), quantized=False, grad_checkpointing=False)
    model.train()
    if compiled:
        print("compiling the decoder on the first step (about 2 minutes on 2 cores) ...", flush=True)
        torch._dynamo.reset()
        decoder = model.get_base_model().get_decoder()
        decoder.forward = torch.compile(decoder.forward)
    ids = torch.randint(0, base.config.vocab_size, (4, 256))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    targets = ids[:, 1:].reshape(-1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> float:
        start = time.perf_counter()
        out = forward.hidden(model, batch)
        states = out.states[:, :-1].reshape(-1, out.states.shape[-1])
        loss = losses.ce_sum_chunked(states, targets, out.head) / targets.numel()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    first = step()
    times = [step() for _ in range(steps)]
    found = {"first_s": round(first, 3), "steps_s": [round(t, 3) for t in times], "median_s": statistics.median(times)}
    if compiled:
        counters = torch._dynamo.utils.counters
        found["graphs"] = int(counters["stats"]["unique_graphs"])
        found["graph_breaks"] = int(sum(counters["graph_break"].values()))
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default="docs/compile_step.json")
    args = ap.parse_args()
    eager, compiled = measure(False, args.steps), measure(True, args.steps)
    result = {
        "machine": machine.describe(),
        "command": f"python benchmarks/compile_step.py --steps {args.steps}",
        "eager": eager,
        "compiled": compiled,
        "compiled_over_eager": round(compiled["median_s"] / eager["median_s"], 3),
        "compile_seconds": round(compiled["first_s"] - eager["first_s"], 1),
    }
    outputs.write_json(Path(args.out), result)
    print(f"machine: {machine.line(result['machine'])}")
    print(f"eager: first step {eager['first_s']:.1f} s, median {eager['median_s']:.2f} s")
    print(f"compiled: first step {compiled['first_s']:.1f} s (compiling), median {compiled['median_s']:.2f} s, "
          f"{compiled['graphs']} graphs, {compiled['graph_breaks']} graph breaks")  # fmt: skip
    print(f"compiled / eager step: {result['compiled_over_eager']:.2f}")


if __name__ == "__main__":
    main()
