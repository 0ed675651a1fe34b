"""LwF's online teacher pass on the whole micro-batch against the part the KL positions need.

The model is causal, so the teacher's hidden states at the KL positions need each row (or packed segment)
only up to its last KL position, and a row without any not at all (`forward.needed_part`). This times the
teacher's forward pass (the embedded SmolLM2-135M-Instruct with LoRA r 8 switched off, no gradient, as
`forgetting._online_kl` runs it) on micro-batches laid out as training lays them out (4 task rows and one
general row, packed as `recipes/sft.py` packs), both ways, alternating, and checks that the states agree.

Rows: speed.py's `uniform` and `longtail` mixes (two thirds prompt, one third answer) and the quickstart's
own tickets; the general row is one of the shipped self-rehearsal rows. KL tokens: `context, rehearsal`
(LwF's default: the task rows' answers are not needed) and `rehearsal` (the budget's default: only the
general row is). Reported per case: the tokens each way, the best of --repeats timings, the ratio.

Run: python benchmarks/teacher_part.py [--batches 4] [--repeats 3] [--threads 2] [--out docs/teacher_part.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import machine  # benchmarks/machine.py: the CPU the timings are from
import outputs  # benchmarks/outputs.py: every file written whole
import speed  # benchmarks/speed.py: the length mixes and forgetless's rendering of them
import torch

from forgetless import api
from forgetless.adapters import attaching
from forgetless.adapters.views import base_view
from forgetless.config.schema import ForgettingConfig, PeftConfig
from forgetless.data.formats import Example
from forgetless.data.packing import attention_cost, collate_packed
from forgetless.data.render import encode_all
from forgetless.model import forward, hardware
from forgetless.model import loader as models
from forgetless.objectives.forgetting import kl_positions, masks_of

ROOT = Path(__file__).resolve().parents[1]
GENERAL = sorted((ROOT / "src/forgetless/assets/generated").glob("rehearsal-*.jsonl"))


def task_rows(mix: str, tmp: Path) -> list[dict]:
    if mix == "quickstart":
        return speed.rendered(ROOT / "src/forgetless/assets/quickstart/train.jsonl")
    data = tmp / f"{mix}.jsonl"
    speed.write_rows(mix, data, n=40)
    return speed.rendered(data)


def general_rows(tokenizer, n: int) -> list[dict]:
    """Self-rehearsal rows (the base model's answers to general prompts), rendered as training renders them."""
    lines = GENERAL[0].read_text(encoding="utf-8").splitlines()[:n]
    examples = [Example(f"{GENERAL[0].name}:{i + 1}", tuple(json.loads(x)["messages"])) for i, x in enumerate(lines)]
    return [r | {"rehearsal": True} for r in encode_all(tokenizer, examples, speed.MAX_LEN, "truncate")]


def timed(model, batch: dict, repeats: int) -> tuple[float, torch.Tensor]:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad(), base_view(model) as base:
            states = forward.hidden(base, batch).states
        best = min(best, time.perf_counter() - start)
    return best, states


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mixes", default="uniform,longtail,quickstart")
    ap.add_argument("--batches", type=int, default=4, help="micro-batches per mix (each timed on its own)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="also write the results and the machine to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = api.load_config("quickstart")
    model, tokenizer, _ = models.load(cfg.model, hardware.device())
    model = attaching.attach(model, PeftConfig(r=8, alpha=16, dropout=0.0), quantized=False, grad_checkpointing=False)
    model.eval()
    attention = getattr(model.config, "_attn_implementation", "sdpa")
    cost = attention_cost(model.config, attention)  # the layout recipes/sft.py picks
    general = general_rows(tokenizer, 4 * args.batches)
    print(f"machine: {machine.line(machine.describe())}")
    print("| rows | KL tokens | tokens: whole → part | whole ms | part ms | part / whole |")
    print("|---|---|---|---|---|---|")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for mix in args.mixes.split(","):
            rows = task_rows(mix, Path(tmp))
            for tokens in (["context", "rehearsal"], ["rehearsal"]):
                kl_tokens = ForgettingConfig(preset="lwf", lwf={"tokens": tokens}).kl_tokens
                whole_s = part_s = 0.0
                whole_n = part_n = 0
                for b in range(args.batches):
                    micro = [*rows[4 * b : 4 * b + 4], general[b]]
                    batch = collate_packed(micro, tokenizer.pad_token_id or 0, 4 * speed.MAX_LEN, cost)
                    where = kl_positions(masks_of(batch), kl_tokens)
                    part, at = forward.needed_part(batch, where)
                    t_whole, s_whole = timed(model, batch, args.repeats)
                    t_part, s_part = timed(model, part, args.repeats)
                    torch.testing.assert_close(s_part[at], s_whole[:, :-1][where], rtol=1e-4, atol=1e-4)
                    whole_s, part_s = whole_s + t_whole, part_s + t_part
                    whole_n += int(batch["attention_mask"].sum())
                    part_n += int(part["attention_mask"].sum())
                row = {"mix": mix, "tokens": tokens, "whole_tokens": whole_n, "part_tokens": part_n}
                row |= {"whole_ms": 1000 * whole_s / args.batches, "part_ms": 1000 * part_s / args.batches}
                results.append(row)
                ratio = part_s / whole_s
                cells = f"{whole_n} → {part_n} | {row['whole_ms']:.0f} | {row['part_ms']:.0f} | {ratio:.2f}"
                print(f"| {mix} | {', '.join(tokens)} | {cells} |", flush=True)
    if args.out:
        outputs.write_json(args.out, {"machine": machine.describe(), "repeats": args.repeats, "results": results})


if __name__ == "__main__":
    main(sys.argv[1:])
