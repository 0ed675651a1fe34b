"""Where the quickstart's evaluation spends its time, and what the base-side cache and the
shared-prompt multiple-choice scorer buy; one run, ratios against the old way in the same process.

1. The base side of the quickstart's evaluation (task answers and perplexity, multiple choice,
   general-text perplexity), computed cold and then looked up again (eval/base_cache.py).
2. Multiple choice on the bundled 60-question set: every choice as a full sequence (the old scorer)
   against the prompt run once per question with its KV cache repeated for the choices; the largest
   difference of a choice's log-probability and whether every answer is the same.

    python benchmarks/eval_cost.py [--threads 2] [--out docs/eval_cost.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from forgetless import api
from forgetless.data.build import build
from forgetless.eval import base_cache, choice, suite
from forgetless.model import loader as models
from forgetless.recipes import runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default="docs/eval_cost.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result: dict = {
        "command": f"python benchmarks/eval_cost.py --threads {args.threads}",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, torch {torch.__version__}",
    }
    with tempfile.TemporaryDirectory() as tmp:
        cfg = api.load_config("quickstart", [f"output_dir={tmp}/run"])
        r = runtime.start(cfg)
        data = build(cfg.data, r.tokenizer, cfg.train.seed)
        scored, rows = data.validation_examples, data.validation
        key = base_cache.key(cfg, r.model_path, str(r.dtype), r.dev.type, scored, rows)
        name = f"benchmark-{time.time_ns()}-" + base_cache.file_name(cfg, key)  # a name no file has: computed
        t0 = time.time()
        cold, hit = base_cache.reuse(name, lambda: suite.measure(r.model, r.tokenizer, cfg, scored, rows))
        t1 = time.time()
        warm, hit2 = base_cache.reuse(name, lambda: suite.measure(r.model, r.tokenizer, cfg, scored, rows))
        t2 = time.time()
        (models.cache_dir() / "eval" / name).unlink()
        result["base_side"] = {
            "cold_s": round(t1 - t0, 1),
            "cached_s": round(t2 - t1, 3),
            "cold_was_computed": not hit,
            "cached_was_reused": hit2,
            "same_numbers": cold == warm,
        }
        items, shots = choice.read_items("builtin:general/mc.jsonl")
        t0 = time.time()
        plain = choice.choice_logprobs(r.model, r.tokenizer, items, shots)
        t1 = time.time()
        shared = choice.shared_prefix_logprobs(r.model, r.tokenizer, items, shots)
        t2 = time.time()
        diff = max(abs(a - b) for pa, sa in zip(plain, shared, strict=True) for a, b in zip(pa, sa, strict=True))
        answers = [max(range(len(x)), key=x.__getitem__) for x in plain]
        result["multiple_choice"] = {
            "questions": len(items),
            "plain_s": round(t1 - t0, 1),
            "shared_prompt_s": round(t2 - t1, 1),
            "speedup": round((t1 - t0) / (t2 - t1), 2),
            "max_abs_logprob_diff": float(f"{diff:.2e}"),
            "same_answers": answers == [max(range(len(x)), key=x.__getitem__) for x in shared],
        }
    Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
