"""Where the quickstart's evaluation spends its time, and what the base-side cache and the
shared-prompt multiple-choice scorer buy; one run, ratios against the old way in the same process.

1. The base side of the quickstart's evaluation (task answers and perplexity, multiple choice,
   general-text perplexity), computed cold and then looked up again (eval/base_cache.py).
2. Multiple choice on the bundled 60-question set: every choice as a full sequence (the old scorer)
   against no prompt token run twice (the few-shot head once, each question's own tokens once, 16
   questions a batch, the KV cache copied per choice); the largest difference of a choice's
   log-probability and whether every answer is the same.
3. With --adapter RUN (a trained quickstart, e.g. runs/quickstart): the retention answers of the
   fine-tuned model generated whole against cut where they part from the base model's answer
   (`generate`'s targets), plainly batched and grouped by where teacher forcing says each parts,
   and whether every "unchanged answer" verdict is the same.

    python benchmarks/eval_cost.py [--threads 2] [--adapter runs/quickstart] [--out docs/eval_cost.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import outputs  # benchmarks/outputs.py: every file written whole
import torch

from forgetless import api
from forgetless.adapters import saved
from forgetless.adapters.saved import adapter_dir
from forgetless.data.build import build
from forgetless.eval import base_cache, choice, retention, suite
from forgetless.model import loader as models
from forgetless.recipes import runtime


def retention_answers(r, cfg, adapter: str) -> dict:
    """Part 3: the fine-tuned model's retention answers generated whole, cut at the first parting, and
    cut with the batches grouped by the teacher-forced parting (what `retention.retention` does)."""
    refs = suite.references(cfg, r.model, r.tokenizer, r.model_path, r.dtype)  # the base's answers (cached)
    model = saved.load(r.model, adapter_dir(adapter))
    n, max_new = len(refs), cfg.eval.retention_max_new_tokens
    parting: list = []
    retention.kl_to_base(model, r.tokenizer, refs, parting=parting)  # the retention KL pass makes it anyway
    t0 = time.time()
    whole, _ = retention.agreement(model, r.tokenizer, refs, max_new, whole=n)
    t1 = time.time()
    cut, _ = retention.agreement(model, r.tokenizer, refs, max_new)
    t2 = time.time()
    grouped, _ = retention.agreement(model, r.tokenizer, refs, max_new, parting=parting)
    t3 = time.time()
    return {
        "prompts": n,
        "unchanged": sum(whole),
        "expected_unchanged_by_teacher_forcing": sum(p is None for p in parting),
        "whole_s": round(t1 - t0, 1),
        "cut_s": round(t2 - t1, 1),
        "cut_grouped_s": round(t3 - t2, 1),
        "speedup": round((t1 - t0) / (t3 - t2), 2),
        "same_verdicts": whole == cut == grouped,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--adapter", help="a trained run of the quickstart, for the retention answers (part 3)")
    ap.add_argument("--out", default="docs/eval_cost.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result: dict = {
        "command": f"python benchmarks/eval_cost.py --threads {args.threads}"
        + (f" --adapter {args.adapter}" if args.adapter else ""),
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
        if args.adapter:  # last: loading the adapter changes r.model in place
            result["retention_answers"] = retention_answers(r, cfg, args.adapter)
    outputs.write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
