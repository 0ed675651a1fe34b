"""Estimated versus measured peak training memory on this machine (CPU, fp32).

Each case trains a few steps in a fresh process (so one case's memory cannot leak into the
next) and samples the process's resident memory (RSS) every few milliseconds during the
steps; the peak is compared with `forgetless.memory.estimate` for the same setup.

Each case runs twice: with glibc told to hand every freed block over 64 KB back to the system
(MALLOC_MMAP_THRESHOLD_=65536), so that RSS follows the memory actually in use, which is what
the estimate models; and with the default allocator, whose heap keeps freed blocks for reuse
and so shows a higher RSS (both are reported).
Cases: the embedded SmolLM2-135M-Instruct and the tests' tiny Llama, with LoRA, QLoRA (4-bit)
and full fine-tuning, at a few batch and sequence sizes.

Run: python benchmarks/memory.py [--out docs/planner.md] [--steps 3]
(the table goes between the <!-- memory-table --> markers of --out; the rows to docs/memory.json)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import outputs  # benchmarks/outputs.py: every file written whole

CASES = [
    # (model, method, batch, seq)
    ("smollm2-135m-instruct", "lora", 4, 256),
    ("smollm2-135m-instruct", "lora", 1, 512),
    ("smollm2-135m-instruct", "lora", 8, 128),
    ("smollm2-135m-instruct", "qlora", 4, 256),
    ("smollm2-135m-instruct", "qlora", 1, 512),
    ("smollm2-135m-instruct", "full", 4, 256),
    ("smollm2-135m-instruct", "full", 1, 128),
    ("tiny", "lora", 4, 256),
    ("tiny", "qlora", 4, 256),
    ("tiny", "full", 4, 256),
]
TINY = {
    "vocab_size": 49152,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Samples RSS in a thread; torch releases the GIL in its kernels, so sampling continues."""

    def __init__(self, every: float = 0.002):
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def _load(model_name: str, method: str):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from forgetless.config.schema import ModelConfig
    from forgetless.model import loader as models

    if model_name == "tiny":
        import tempfile

        tmp = tempfile.mkdtemp()
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(LlamaConfig(**TINY)).save_pretrained(tmp)
        models.load_tokenizer(models.resolve("smollm2-135m-instruct")).save_pretrained(tmp)
        model_name = tmp
    quant = "4bit" if method == "qlora" else "none"
    model, _, path = models.load(ModelConfig(name=model_name, precision="fp32", quantization=quant))
    return model, path


def run_case(model_name: str, method: str, batch: int, seq: int, steps: int) -> dict:
    """Runs in the child process: load, attach, train `steps` steps, return peak RSS and the estimate."""
    import ctypes

    import torch

    from forgetless.adapters import attaching
    from forgetless.config.schema import DEFAULT_LR, ForgettingConfig, PeftConfig, TrainConfig
    from forgetless.objectives.sft import objective
    from forgetless.plan import memory, shapes
    from forgetless.training import optim

    torch.manual_seed(0)
    model, path = _load(model_name, method)
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        model = attaching.attach(model, PeftConfig(), quantized=method == "qlora", grad_checkpointing=False)
    model.train()
    optimizer = optim.make_optimizer(model, TrainConfig(lr=DEFAULT_LR["lora"]))
    loss_fn = objective(ForgettingConfig(preset="none")).loss
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq))
    data = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": ids.clone(),
        "rehearsal": torch.zeros(batch, dtype=torch.bool),
    }
    norms = {"targets": float(batch * (seq - 1)), "batches": 1.0}
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand loading's freed buffers back: measure training
    start = rss_bytes()
    with PeakRss() as peak:
        for _ in range(steps):
            sum(loss_fn(model, data, norms).values()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    shape, _ = shapes.resolve_shape(path)
    setup = memory.Setup(
        method=method, dtype_bytes=4, batch_size=batch, seq_len=seq, r=8, lora_dropout=True, device="cpu"
    )
    return {
        "model": "tiny" if model_name == "tiny" else model_name,
        "method": method,
        "batch": batch,
        "seq": seq,
        "params_m": round(shape.params() / 1e6, 1),
        "measured_gb": round(peak.peak / 1e9, 3),
        "before_steps_gb": round(start / 1e9, 3),
        "estimate": memory.estimate(shape, setup),
    }


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/planner.md")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: run one case in this process
    args = ap.parse_args(argv)
    if args.case:
        from forgetless.model.hardware import quiet_third_party_logs

        quiet_third_party_logs()
        print(json.dumps(run_case(*json.loads(args.case), args.steps)))
        return
    rows = []
    for case in CASES:
        row = _child(case, args.steps, {"MALLOC_MMAP_THRESHOLD_": "65536"})
        row["default_malloc_gb"] = _child(case, args.steps, {})["measured_gb"]
        row["error"] = round(row["estimate"]["total"] / row["measured_gb"] - 1, 3)
        rows.append(row)
        print(
            f"{case}: measured {row['measured_gb']:.3f} GB, estimated {row['estimate']['total']:.3f} GB "
            f"({100 * row['error']:+.1f}%)",
            flush=True,
        )
    write(rows, Path(args.out))


def _child(case, steps: int, env: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"} | env
    cmd = [sys.executable, __file__, "--case", json.dumps(case), "--steps", str(steps)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"case {case} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write(rows: list[dict], out: Path) -> None:
    head = (
        "| model | method | batch × seq | peak RSS (GB) | estimate (GB) | error | peak RSS, default malloc (GB) | "
        "estimate: weights / grads / optimizer / adapters / activations / overhead |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        e = r["estimate"]
        parts = " / ".join(
            f"{e[k]:.3f}" for k in ("weights", "gradients", "optimizer", "adapters", "activations", "overhead")
        )
        lines.append(
            f"| {r['model']} ({r['params_m']} M) | {r['method']} | {r['batch']} × {r['seq']} | {r['measured_gb']:.3f} "
            f"| {e['total']:.3f} | {100 * r['error']:+.1f}% | {r['default_malloc_gb']:.3f} | {parts} |"
        )
    worst = max(abs(r["error"]) for r in rows)
    table = head + "\n".join(lines) + f"\n\nLargest error: {100 * worst:.1f}%.\n"
    outputs.write_json(out.parent / "memory.json", rows)
    outputs.fill_section(out, "<!-- memory-table -->", table)
    print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
