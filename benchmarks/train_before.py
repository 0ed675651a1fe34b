"""The quickstart's training steps at a git ref and at the working tree: what a change to the training step
bought, and whether the run it trains stayed the same.

`forgetless train quickstart` runs for `--steps` optimizer steps with the evaluation off, in a fresh process
per side, alternating (before, now, before, now, ...) so that a machine that slows down during the
benchmark slows both. Each side's training seconds come from its summary.json; every logged number of
every step (loss, CE, LwF term, gradient norm) is compared between the sides: a speed change must leave
them equal up to float rounding.

    python benchmarks/train_before.py --before HEAD [--steps 30] [--rounds 2] [--out docs/train_before.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import alternate  # benchmarks/alternate.py: before and now, alternating
import machine  # benchmarks/machine.py: the CPU beside every time
import outputs  # benchmarks/outputs.py: every file written whole

ROOT = Path(__file__).resolve().parents[1]
LOGGED = ("loss", "ce", "lwf", "grad_norm")
FLOOR = 1e-4
QUIET = ["eval.before_after=false", "eval.retention=false", "eval.benchmarks=[]", "eval.report=false"]


def run(src: Path, steps: int, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    sizes = [f"train.max_steps={steps}", f"train.eval_every={steps + 1}", f"train.save_every={steps + 1}"]
    cmd = [sys.executable, "-m", "forgetless", "train", "quickstart", f"output_dir={out}", *sizes, *QUIET]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [[x[k] for k in LOGGED] for x in lines if "loss" in x]
    return {"train_s": round(summary["train_seconds"], 1), "steps": logged}


def largest_difference(a: list[list[float]], b: list[list[float]]) -> float:
    """The largest relative difference between two runs' logged numbers (float rounding: ~1e-6 and growing
    slowly over the steps, as any reordering of sums does). Numbers under FLOOR compare against it: the LwF
    term before the adapter has moved is float noise around 0 (~1e-9), whose relative differences say nothing."""
    if len(a) != len(b):
        return float("inf")
    pairs = [(x, y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)]
    return max((abs(x - y) / max(abs(x), abs(y), FLOOR) for x, y in pairs), default=0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="the git ref to compare with (e.g. HEAD)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="docs/train_before.json")
    args = ap.parse_args()
    sides = alternate.sides(
        args.before, args.rounds, lambda src, out: run(src, args.steps, out), lambda r: f"{r['train_s']} s"
    )
    median = {side: statistics.median(r["train_s"] for r in runs) for side, runs in sides.items()}
    result = {
        "command": f"python benchmarks/train_before.py --before {args.before} --steps {args.steps} "
        f"--rounds {args.rounds}",
        "before_commit": alternate.commit(args.before),
        "machine": machine.describe(),
        "median_train_seconds": median,
        "ratio": round(median["now"] / median["before"], 3),
        "largest_relative_difference": max(
            largest_difference(r["steps"], sides["before"][0]["steps"]) for r in sides["now"] + sides["before"]
        ),
        "runs": sides,
    }
    outputs.write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("median_train_seconds", "ratio", "largest_relative_difference")}))


if __name__ == "__main__":
    main()
