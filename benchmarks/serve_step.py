"""Where a batched server's time goes: the batcher's prefill and decoding step, timed in one process.

On the embedded model with three LoRA adapters (as benchmarks/serve_load.py makes them), for one row,
8 rows of one adapter, and 8 rows over base + 3 adapters (the stacked adapters of deploy/routing.py): the
seconds to prefill the rows' prompts together, once the template's shared head is cached for their
adapters (deploy/prefix.py; a first admission makes it), and the seconds per decoding step (mean of 10).
Alone on the machine; compare the rows with each other.

With --profile, each setting's next 5 steps run under torch's profiler and its busiest operators are printed
(self CPU time, the share of the steps' total): where a step's time goes.

Run: python benchmarks/serve_step.py [--out docs/serve_step.json] [--profile]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import outputs  # benchmarks/outputs.py: every file written whole

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_load import _cpu, make_adapters


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--profile", action="store_true", help="the busiest operators of 5 more steps per setting")
    args = ap.parse_args(argv)

    from forgetless.deploy.engine import Engine
    from forgetless.deploy.job import Job

    with tempfile.TemporaryDirectory() as tmp:
        adapters = dict(a.split("=", 1) for a in make_adapters(Path(tmp)))
        engine = Engine(None, adapters, max_tokens=64, max_prompt_tokens=256, max_batch=8)
        engine.batcher.stop()  # driven by hand below, one phase at a time
        batcher, tok = engine.batcher, engine.tokenizer
        chat = [{"role": "user", "content": "My parcel is late, order 12345. Please help."}]
        ids = tok(tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True), add_special_tokens=False)
        rows = []
        for label, names in (
            ("1 row", ["support"]),
            ("8 rows, one adapter", ["support"] * 8),
            ("8 rows, base + 3 adapters", ["base", "support", "legal", "medical"] * 2),
        ):
            batcher._reset()
            batcher.waiting.extend(Job(n, ids["input_ids"], 64) for n in names)
            batcher._admit()  # the shared head of these adapters, made once
            batcher._reset()
            batcher.waiting.extend(Job(n, ids["input_ids"], 64) for n in names)
            t0 = time.perf_counter()
            batcher._admit()
            prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(10):
                batcher._step()
            step = (time.perf_counter() - t0) / 10
            rows.append({"rows": label, "prompt_tokens": len(ids["input_ids"]), "prefill_s": round(prefill, 3),
                         "step_s": round(step, 3), "tokens_per_s": round(len(names) / step, 1)})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
            if args.profile:
                print(busiest(lambda: [batcher._step() for _ in range(5)]), flush=True)
    if args.out:
        report = {"machine": _cpu(), "rows": rows}
        outputs.write_json(args.out, report)


def busiest(run, top: int = 8) -> str:
    """The operators with the most self CPU time while `run()` runs, with their share of the total."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    return "  " + "; ".join(f"{e.key} {e.self_cpu_time_total / total:.0%} ({e.count} calls)" for e in ops[:top])


if __name__ == "__main__":
    main(sys.argv[1:])
