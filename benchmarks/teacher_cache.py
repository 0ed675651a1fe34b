"""How close the cached top-k teacher's KL is to the exact LwF KL, and what it costs on disk.

Takes a trained run (default: the quickstart's, `make demo`), its training rows and the bundled
self-rehearsal rows, and computes on the LwF positions (context and rehearsal tokens) the exact
KL(p_finetuned ‖ p_base) and the KL against the base's cached top-k (k = 8, 32, 128) with the
tail mass, as `forgetting.lwf.teacher: cached` trains with it. Prints and writes
docs/topk.json; docs/performance.md quotes it.

Run: python benchmarks/topk.py [--run runs/quickstart] [--rows 48]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import outputs  # benchmarks/outputs.py: every file written whole
import torch

from forgetless import api
from forgetless.adapters import saved, views
from forgetless.data.batching import collate
from forgetless.data.build import build
from forgetless.model import forward
from forgetless.model import loader as models
from forgetless.objectives.losses import kl_sum, kl_topk_sum, position_masks
from forgetless.objectives.sft import kl_positions
from forgetless.reference import topk
from forgetless.reference.rehearsal import general_rows


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/quickstart")
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--out", default="docs/topk.json")
    args = ap.parse_args(argv)
    cfg = api.load_config(Path(args.run) / "config.yaml")
    base, tok, path = models.load(cfg.model)
    general, _ = general_rows(cfg, base, tok, path, str(base.dtype))
    rows = build(cfg.data, tok, cfg.train.seed).train[: args.rows] + [
        {**r, "rehearsal": True} for r in general[: args.rows // 4]
    ]
    caches = {k: topk.build(base, rows, tok.pad_token_id, k, cfg.forgetting.lwf.temperature) for k in (8, 32, 128)}
    model = saved.load(base, Path(args.run) / "adapter").eval()
    exact, approx, positions = 0.0, dict.fromkeys(caches, 0.0), 0
    with torch.no_grad():
        for i in range(0, len(rows), 8):
            batch = collate(rows[i : i + 8], tok.pad_token_id)
            where = kl_positions(
                position_masks(batch["labels"], batch["attention_mask"], batch["rehearsal"]), cfg.forgetting.lwf.tokens
            )
            student = forward.logits_of(model, batch["input_ids"], batch["attention_mask"])[:, :-1][where]
            with views.base_view(model) as b:
                teacher = forward.logits_of(b, batch["input_ids"], batch["attention_mask"])[:, :-1][where]
            exact += float(kl_sum(student, teacher))
            for k, cache in caches.items():
                idx, logp, tail = (t[where] for t in cache.lookup(batch))
                approx[k] += float(kl_topk_sum(student, idx, logp, tail))
            positions += int(where.sum())
    result = {
        "run": args.run,
        "rows": len(rows),
        "positions": positions,
        "exact_kl_per_token": exact / positions,
        "cached": {
            k: {
                "kl_per_token": approx[k] / positions,
                "share_of_exact": approx[k] / exact,
                "bytes_per_token": caches[k].nbytes() / caches[k].idx.shape[0],
            }
            for k in caches
        },
    }
    print(json.dumps(result, indent=2))
    outputs.write_json(args.out, result)


if __name__ == "__main__":
    main(sys.argv[1:])
