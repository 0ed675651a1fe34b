"""Does RL forget less than SFT? SFT and GRPO on the shipped arithmetic task, the same model, rows and
number of optimizer steps, each with and without the forgetting controls, over seeds.

    SFT            recipe sft,  forgetting.preset none  (the loss on the reference answers)
    SFT + full     recipe sft,  forgetting.preset full  (LwF + self-rehearsal)
    GRPO           recipe grpo, forgetting.preset none  (its KL to the base: grpo.kl_coef)
    GRPO + full    recipe grpo, forgetting.preset full  (general rows beside every micro-batch)

Every run starts from configs/grpo.yaml (40 optimizer steps of 16 sequences: 8 rows × 2 accumulation
for SFT, 4 prompts × 4 answers for GRPO) and reports on the test split; SFT trains at the quickstart's
LoRA rate (3e-3), GRPO at its config's (3e-4); no setting was tuned on the test rows. Per run: numeric
match (the answer's last number is the result: GRPO's reward, the same check for both) before and after
(the task gain), KL to the base per token on held-out general prompts, KL(base ‖
tuned) per answer token on the task's own held-out rows (RL's Razor's measure), multiple-choice accuracy
with its 95% interval, wall time.

Run: python benchmarks/sft_vs_rl.py [--seeds 1 2 3] [--out runs/sft_vs_rl] [--docs docs]
Writes DOCS/sft_vs_rl.json (every run's numbers), DOCS/sft_vs_rl.md (the table) and DOCS/sft_vs_rl.png
(task gain against KL on the task's prompts, one point per method, bars: sd over seeds). A finished run
is reused (delete its folder to redo it), and so is a run DOCS/sft_vs_rl.json already holds when its
folder is gone but the overrides, threads per run and CPU are the same (each run records its machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import machine  # benchmarks/machine.py: the CPU the runs ran on
import outputs  # benchmarks/outputs.py: every file written whole

TEST = "builtin:arithmetic/test.jsonl"
METHODS = {
    "SFT": ["recipe=sft", "forgetting.preset=none", "train.lr=3e-3"],
    "SFT + full": ["recipe=sft", "forgetting.preset=full", "train.lr=3e-3"],
    "GRPO": ["recipe=grpo", "forgetting.preset=none"],
    "GRPO + full": ["recipe=grpo", "forgetting.preset=full"],
}
MEASURES = (  # (key, label, digits)
    ("gain", "numeric-match gain", 3),
    ("numeric_match", "numeric match after", 3),
    ("kl_general", "KL to base, general prompts", 4),
    ("kl_task", "KL(base ‖ tuned), task prompts", 4),
    ("mc_diff", "multiple-choice Δ", 3),
    ("wall_s", "wall s", 0),
)


def numbers(run: Path) -> dict:
    ev = json.loads((run / "eval.json").read_text(encoding="utf-8"))
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    em = ev["task"]["numeric_match"]
    bench = next(iter(ev["retention"].get("benchmarks", {}).values()), {"acc": {}})["acc"]
    out = {
        "numeric_match_base": em["base"],
        "numeric_match": em["finetuned"],
        "gain": em["finetuned"] - em["base"],
        "kl_general": (ev["retention"].get("prompts") or {}).get("kl_per_token"),
        "kl_task": (ev["retention"].get("task_prompts") or {}).get("kl_base_to_tuned"),
        "mc_base": bench.get("base"),
        "mc": bench.get("finetuned"),
        "mc_diff": bench.get("diff"),
        "mc_diff_ci": bench.get("diff_ci"),
        "wall_s": summary.get("wall_seconds"),
    }
    if isinstance(ev["task"].get("reward"), dict):
        out |= {"reward_base": ev["task"]["reward"]["base"], "reward": ev["task"]["reward"]["finetuned"]}
        out["reward_diff_ci"] = ev["task"]["reward"]["diff_ci"]
    return out


def recorded(path: Path, overrides: list[str], threads: int) -> dict[str, dict[str, dict]]:
    """The runs an earlier table holds that this one may reuse: same overrides, threads per run and CPU."""
    if not path.is_file():
        return {}
    old = json.loads(path.read_text(encoding="utf-8"))
    here = machine.describe()
    if old.get("overrides") != overrides or old.get("threads_per_run") != threads:
        return {}
    same = {k: here[k] for k in ("cpu", "vector", "cores", "torch")}
    return {
        method: {
            seed: run | {"machine": run.get("machine", old["machine"])}
            for seed, run in runs.items()
            if {k: run.get("machine", old["machine"])[k] for k in same} == same
        }
        for method, runs in old["runs"].items()
    }


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def table(results: dict[str, dict[str, dict]]) -> str:
    head = "| method | " + " | ".join(label for _, label, _ in MEASURES) + " | multiple-choice Δ 95% CIs |"
    lines = [head, "|---" * (len(MEASURES) + 2) + "|"]
    for method, runs in results.items():
        cells = []
        for key, _, d in MEASURES:
            s = spread([r[key] for r in runs.values() if r.get(key) is not None])
            cells.append(f"{s['mean']:.{d}f} ± {s['std']:.{d}f}")
        cis = [r["mc_diff_ci"] for r in runs.values() if r.get("mc_diff_ci")]
        ci_text = ", ".join(f"[{lo:+.3f}, {hi:+.3f}]" for lo, hi in cis)
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {ci_text} |")
    return "\n".join(lines)


def chart(results: dict[str, dict[str, dict]], path: Path) -> None:
    import matplotlib  # plotting only here, after the runs

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "kl_task", "KL(base ‖ tuned) per token, task prompts"),
                           (axes[1], "kl_general", "KL to base per token, general prompts")):  # fmt: skip
        for method, runs in results.items():
            xs = [r[key] for r in runs.values() if r.get(key) is not None]
            ys = [r["gain"] for r in runs.values()]
            if not xs:
                continue
            x, y = spread(xs), spread(ys)
            ax.errorbar(x["mean"], y["mean"], xerr=x["std"], yerr=y["std"], fmt="o", capsize=4, label=method)
        ax.set_xlabel(label)
        ax.set_ylabel("numeric-match gain on the test split")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("SFT against GRPO on the arithmetic task (mean ± sd over seeds)")
    fig.tight_layout()
    outputs.save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of: " + ", ".join(METHODS))
    ap.add_argument("--out", default="runs/sft_vs_rl")
    ap.add_argument("--docs", default="docs")
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time, the cores split between them (wall times then compare within this table only)",
    )
    ap.add_argument("overrides", nargs="*", help="extra key=value settings for every run")
    args = ap.parse_args()
    out, docs = Path(args.out), Path(args.docs)
    methods = [m.strip() for m in args.methods.split(",")]
    todo = []
    for method in methods:
        for seed in args.seeds:
            run = out / f"{method.replace(' + ', '-').replace(' ', '-').lower()}-seed{seed}"
            cmd = [sys.executable, "-m", "forgetless", "train", "grpo", *METHODS[method], f"train.seed={seed}"]
            cmd += [f"data.validation={TEST}", f"output_dir={run}", "--overwrite", *args.overrides]
            todo.append((method, seed, run, cmd))
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    earlier = recorded(docs / "sft_vs_rl.json", args.overrides, threads)
    env = os.environ | ({"OMP_NUM_THREADS": str(threads)} if args.jobs > 1 else {})
    running: list[subprocess.Popen] = []
    for method, seed, run, cmd in todo:
        if (run / "eval.json").is_file() or str(seed) in earlier.get(method, {}):
            continue
        while sum(p.poll() is None for p in running) >= args.jobs:
            time.sleep(5)
        print("[sft_vs_rl] " + " ".join(cmd[2:]), flush=True)
        out.mkdir(parents=True, exist_ok=True)
        log = (out / f"{run.name}.log").open("w") if args.jobs > 1 else None
        running.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT if log else None))
    if any(p.wait() != 0 for p in running):
        raise SystemExit("[sft_vs_rl] a run failed: see its log under " + str(out))
    results: dict[str, dict[str, dict]] = {m: {} for m in methods}
    for method, seed, run, _ in todo:
        if (run / "eval.json").is_file():
            results[method][str(seed)] = numbers(run) | {"machine": machine.describe()}
        else:
            results[method][str(seed)] = earlier[method][str(seed)]
            print(f"[sft_vs_rl] {method} seed {seed}: from the earlier {docs / 'sft_vs_rl.json'}", flush=True)
        print(f"[sft_vs_rl] {method} seed {seed}: {results[method][str(seed)]}", flush=True)
    result = {"machine": machine.describe(), "overrides": args.overrides, "methods": METHODS, "runs": results}
    result["jobs"], result["threads_per_run"] = args.jobs, threads
    md = f"Machine: {machine.line(result['machine'])}; seeds {', '.join(map(str, args.seeds))}; test split; "
    md += f"`python benchmarks/sft_vs_rl.py {' '.join(sys.argv[1:])}`"
    md += f" ({args.jobs} runs at a time, {threads} thread(s) each).\n\n" if args.jobs > 1 else ".\n\n"
    md += table(results) + "\n"
    outputs.write_json(docs / "sft_vs_rl.json", result)
    outputs.write_text(docs / "sft_vs_rl.md", md)
    chart(results, docs / "sft_vs_rl.png")
    print(md)


if __name__ == "__main__":
    main()
