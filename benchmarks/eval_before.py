"""The fine-tuned side of a run's evaluation, part by part, at a git ref and at the working tree: what a
change to the evaluation bought, and whether every number it reports stayed the same.

`forgetless eval --run RUN` runs in a fresh process for each side, alternating (before, now, before,
now, ...) so that a machine that slows down during the benchmark slows both; each prints where its
evaluation's time went ("[forgetless] evaluation took ..."), read here, and writes eval.json, whose
numbers are compared between the sides. The base side is the cached one (eval/base_cache.py) in both.

    python benchmarks/eval_before.py --run runs/quickstart --before HEAD [--rounds 2] [--out docs/eval_before.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import alternate  # benchmarks/alternate.py: before and now, alternating
import machine  # benchmarks/machine.py: the CPU beside every time
import outputs  # benchmarks/outputs.py: every file written whole

ROOT = Path(__file__).resolve().parents[1]
PART = re.compile(r"([a-zA-Z][a-zA-Z ,-]*?) ([0-9.]+) s")


def parts(stdout: str) -> dict[str, float]:
    """The seconds per part from the last "[forgetless] evaluation took ..." line (the fine-tuned side)."""
    lines = [x for x in stdout.splitlines() if x.startswith("[forgetless] evaluation took ")]
    if not lines:
        raise SystemExit("no '[forgetless] evaluation took' line in the eval's output")
    text = lines[-1].removeprefix("[forgetless] evaluation took ")
    return {name.strip(" ,"): float(s) for name, s in PART.findall(text)}


def numbers(eval_json: Path) -> dict:
    """The numbers the report quotes: task metrics and retention (the samples' texts left out)."""
    e = json.loads(eval_json.read_text())
    task = {k: v["finetuned"] for k, v in e["task"].items() if isinstance(v, dict) and "finetuned" in v}
    r = e["retention"]
    out = {"task": task, "kl_per_token": r["prompts"]["kl_per_token"], "agreement": r["prompts"]["agreement"]}
    out["task_kl"] = r.get("task_prompts", {}).get("kl_base_to_tuned")
    out["benchmarks"] = {k: v["acc"]["finetuned"] for k, v in r.get("benchmarks", {}).items()}
    return out


def flat(tree: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out |= flat(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float)):
            out[prefix + k] = float(v)
    return out


def largest_difference(a: dict, b: dict) -> float:
    """The largest relative difference between two sides' numbers (float rounding shows as ~1e-7)."""
    fa, fb = flat(a), flat(b)
    if fa.keys() != fb.keys():
        return float("inf")
    return max((abs(fa[k] - fb[k]) / max(abs(fa[k]), abs(fb[k]), 1e-12) for k in fa), default=0.0)


def run(src: Path, run_dir: str, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    started = time.time()
    cmd = [sys.executable, "-m", "forgetless", "eval", "--run", run_dir, "--out", str(out)]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    seconds = round(time.time() - started, 1)
    return {"wall_s": seconds, "parts": parts(done.stdout), "numbers": numbers(out / "eval.json")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a trained run directory (e.g. runs/quickstart)")
    ap.add_argument("--before", required=True, help="the git ref to compare with (e.g. HEAD)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="docs/eval_before.json")
    args = ap.parse_args()
    sides = alternate.sides(
        args.before, args.rounds, lambda src, out: run(src, args.run, out), lambda r: json.dumps(r["parts"])
    )
    commit = alternate.commit(args.before)
    names = list(sides["now"][0]["parts"])
    table = {
        name: {
            side: round(statistics.median(r["parts"].get(name, 0.0) for r in runs), 1) for side, runs in sides.items()
        }
        for name in names
    }
    table["total"] = {
        side: round(statistics.median(sum(r["parts"].values()) for r in runs), 1) for side, runs in sides.items()
    }
    for row in table.values():
        row["ratio"] = round(row["now"] / row["before"], 2) if row["before"] else None
    result = {
        "command": f"python benchmarks/eval_before.py --run {args.run} --before {args.before} --rounds {args.rounds}",
        "before_commit": commit,
        "machine": machine.describe(),
        "median_seconds": table,
        # the report prints 4 significant digits; float rounding moves a number by about 1e-7 of itself
        "largest_relative_difference": max(
            largest_difference(r["numbers"], sides["before"][0]["numbers"]) for r in sides["now"] + sides["before"]
        ),
        "runs": sides,
    }
    outputs.write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("median_seconds", "largest_relative_difference")}, indent=2))


if __name__ == "__main__":
    main()
