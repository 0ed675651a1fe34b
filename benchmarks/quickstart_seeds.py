"""The quickstart's numbers over seeds: what the README quotes, as mean ± standard deviation.

Each seed is one `forgetless train quickstart train.seed=S` (the whole first run a user makes: training,
then the evaluation of the fine-tuned model; the base side comes from the shipped scores). With
`--split validation` the runs score the validation split instead of the test split: that is where
settings are chosen (pass them as extra overrides), so the test rows the README reports are never
used to pick them.

Run: python benchmarks/quickstart_seeds.py [--seeds 42 2 3] [--split test|validation] [--out runs/seeds]
     [--recipe quickstart] [OVERRIDE ...]
Writes OUT/seeds.json (every run's numbers and the summary) and OUT/seeds.md (the table); the runs'
folders are kept (a finished seed is reused: delete its folder to redo it). About 3-5 minutes a seed
on 2 CPU cores. docs/quickstart_seeds.{json,md} are this script's output for the README.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import machine  # benchmarks/machine.py: the CPU the seeds ran on
import outputs  # benchmarks/outputs.py: every file written whole

SPLITS = {"test": "builtin:quickstart/test.jsonl", "validation": "builtin:quickstart/validation.jsonl"}
MEASURES = (  # (key, label, digits)
    ("exact_match", "exact match", 3),
    ("kl", "KL to base / token", 4),
    ("unchanged", "unchanged greedy answers", 3),
    ("mc", "multiple choice", 3),
)  # wall seconds stay in the JSON: runs measured beside other work give no comparable times


def numbers(run: Path) -> dict:
    """The README's measures of one finished run, from its eval.json and summary.json."""
    ev = json.loads((run / "eval.json").read_text(encoding="utf-8"))
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    prompts = ev["retention"].get("prompts") or {}
    bench = next(iter(ev["retention"].get("benchmarks", {}).values()), None)
    return {
        "exact_match": ev["task"]["exact_match"]["finetuned"],
        "exact_match_base": ev["task"]["exact_match"]["base"],
        "kl": prompts.get("kl_per_token"),
        "unchanged": prompts.get("agreement"),
        "mc": bench["acc"]["finetuned"] if bench else None,
        "mc_base": bench["acc"]["base"] if bench else None,
        "wall_s": summary.get("wall_seconds"),
    }


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation, smallest and largest value over the seeds."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def summarise(runs: dict[int, dict]) -> dict:
    keys = [k for k, _, _ in MEASURES] + ["wall_s"]
    return {
        key: spread([r[key] for r in runs.values() if r.get(key) is not None])
        for key in keys
        if any(r.get(key) is not None for r in runs.values())
    }


def table(runs: dict[int, dict], summary: dict) -> str:
    keys = [(k, label, d) for k, label, d in MEASURES if k in summary]
    lines = ["| seed | " + " | ".join(label for _, label, _ in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for seed, r in runs.items():
        lines.append(f"| {seed} | " + " | ".join(f"{r[k]:.{d}f}" for k, _, d in keys) + " |")
    cells = [f"{summary[k]['mean']:.{d}f} ± {summary[k]['std']:.{d}f}" for k, _, d in keys]
    lines.append("| **mean ± sd** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 2, 3])
    ap.add_argument("--split", choices=sorted(SPLITS), default="test")
    ap.add_argument("--recipe", default="quickstart")
    ap.add_argument("--out", default="runs/seeds")
    ap.add_argument("overrides", nargs="*", help="extra key=value settings for every seed")
    args = ap.parse_args()
    out = Path(args.out)
    runs: dict[int, dict] = {}
    for seed in args.seeds:
        run = out / f"{args.recipe}-{args.split}-seed{seed}"
        if not (run / "eval.json").is_file():
            cmd = [sys.executable, "-m", "forgetless", "train", args.recipe, f"train.seed={seed}"]
            cmd += [f"data.validation={SPLITS[args.split]}", f"output_dir={run}", "--overwrite", *args.overrides]
            print("[seeds] " + " ".join(cmd[2:]), flush=True)
            subprocess.run(cmd, check=True)
        runs[seed] = numbers(run)
        print(f"[seeds] seed {seed}: {runs[seed]}", flush=True)
    summary = summarise(runs)
    result = {
        "recipe": args.recipe,
        "split": args.split,
        "overrides": args.overrides,
        "machine": machine.describe(),
        "runs": {str(s): r for s, r in runs.items()},
        "summary": summary,
    }
    md = f"Machine: {machine.line(result['machine'])}; recipe {args.recipe}, {args.split} split.\n\n"
    md += table(runs, summary) + "\n"
    outputs.write_json(out / "seeds.json", result)
    outputs.write_text(out / "seeds.md", md)
    print(table(runs, summary))


if __name__ == "__main__":
    main()
