"""Four tasks in a row on the embedded model, with and without the forgetting controls, over seeds.

Stage 1 is the quickstart (ticket triage, exact match); stage 2 continues it on polite Japanese answers
(the keigo pairs' chosen side as SFT rows, chrF); stage 3 on extracting orders as JSON (exact match);
stage 4 on help-desk word problems answered with free-text reasoning (the final number). Each method trains
the chain with `--continue-from`:

  none        plain LoRA at every stage
  full        preset full; the earlier stages' training rows replayed beside the base's answers
  budget      full with forgetting.budget.kl (--budget-kl): KL to the stage before held at every stage
  on-policy   full with on-policy replay: the current model's answers to the general prompts and the earlier
              stages' prompts, filtered by their KL to the stage before, replayed in the next rehearsal rows
              and put in place of those prompts' rows (earlier stages' rows replayed too)

The table: backward transfer (BWT: the mean change of each earlier task's score from just after it was
learned to the end, scores on a 0-1 scale) and the final average over the four tasks, mean ± sd over the
seeds; the seconds per chain, and of them those in training steps and in the loop's hook between steps (the
on-policy answers, the budget's probes: the cost of each beside the training it rides on); and each
method's retention matrix from the first seed.

Run: python benchmarks/sequential.py [--out runs/sequential] [--methods none full budget on-policy]
     [--seeds 0 1 2] [--steps 30 20 20 20] [--budget-kl 0.03] [--override KEY=VALUE ...]
A finished stage is reused (delete its directory to retrain it). Writes OUT/sequential.md and .json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import machine  # benchmarks/machine.py: the CPU the chains trained on
import outputs  # benchmarks/outputs.py: every file written whole
import tasks  # benchmarks/tasks.py: the task data
from outputs import mean_sd

from forgetless import api
from forgetless.eval import earlier_tasks

STAGES = [("1-triage", "triage"), ("2-keigo", "keigo"), ("3-orders", "orders"), ("4-reasoning", "reasoning")]
METHODS = ("none", "full", "budget", "on-policy")
COSTS = ("seconds", "train_seconds", "adjust_seconds")


def method_overrides(method: str, done: list[Path], budget_kl: float) -> list[str]:
    """The forgetting settings of `method` at a stage that continues the runs `done`."""
    if method == "none":
        return ["forgetting.preset=none"]
    sources = ["on_policy" if method == "on-policy" else "self", *map(str, done)]
    out = ["forgetting.preset=full", f"forgetting.rehearsal.source=[{', '.join(sources)}]"]
    return out + ([f"forgetting.budget.kl={budget_kl}"] if method == "budget" else [])


def chain(out: Path, method: str, seed: int, args, common: list[str]) -> list[Path]:
    done: list[Path] = []
    for (name, task), n in zip(STAGES, args.steps, strict=True):
        run = out / method / f"seed-{seed}" / name
        if not (run / "summary.json").is_file():
            overrides = [*tasks.overrides(task, out / "data"), *common, *method_overrides(method, done, args.budget_kl)]
            overrides += [f"train.max_steps={n}", f"train.seed={seed}", f"output_dir={run}"]
            overrides += [f"model.continue_from={done[-1]}"] if done else []
            started = time.time()
            api.train(api.load_config("quickstart-long", [*overrides, *args.override]), overwrite=run.exists())
            print(f"[sequential] {method} seed {seed} {name}: {time.time() - started:.0f} s")
        done.append(run)
    return done


def costs(runs: list[Path]) -> dict:
    """Wall seconds, those in training steps, and those in the loop's hook between steps (on-policy answering,
    budget probes: metrics.jsonl's adjust_seconds), summed over the chain's stages: what each method adds."""
    summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
    records = [json.loads(line) for r in runs for line in (r / "metrics.jsonl").read_text().splitlines() if line]
    hook = [m["adjust_seconds"] for m in records if "adjust_seconds" in m]
    return {
        "seconds": sum(s["wall_seconds"] for s in summaries),
        "train_seconds": sum(s["train_seconds"] for s in summaries),
        "adjust_seconds": sum(hook) if hook else None,  # None: runs made before it was recorded
    }


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/sequential")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", nargs=len(STAGES), type=int, default=[30, 20, 20, 20], help="steps of each stage")
    ap.add_argument("--budget-kl", type=float, default=0.03, help="method budget: KL to the stage before")
    ap.add_argument("--max-examples", type=int, default=30, help="test rows scored per task")
    ap.add_argument("--override", nargs="*", default=[], help="more KEY=VALUE for every run (e.g. tests' tiny sizes)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    common = [f"eval.max_examples={args.max_examples}", "eval.samples=0"]
    common += ["train.eval_every=1000", "train.save_every=1000"]  # no mid-run validation or checkpoints
    found: dict[str, list[dict]] = {}
    matrices: list[str] = []
    for method in args.methods:
        for seed in args.seeds:
            runs = chain(out, method, seed, args, common)
            cost = {"seed": seed} | costs(runs)
            found.setdefault(method, []).append(cost | earlier_tasks.backward_transfer(runs[-1]))
            if seed == args.seeds[0]:
                table = earlier_tasks.matrix(runs[-1])
                rows = ["| " + " | ".join(r) + " |" for r in table]
                rows.insert(1, "|" + "---|" * len(table[0]))
                matrices += [f"### {method}, seed {seed} ({cost['seconds']:.0f} s for the four stages)", "", *rows, ""]
    head = f"Machine: {machine.line(machine.describe())}; steps {args.steps}, seeds {args.seeds}.\n"
    lines = ["# Four tasks in a row (benchmarks/sequential.py)", "", head]
    lines += ["| method | BWT (0-1 scale) | final average | seconds per chain | of which training steps / hook |"]
    lines += ["|---|---|---|---|---|"]
    for method, results in found.items():
        bwt = [r["bwt"] for r in results if r["bwt"] is not None]
        final = [r["final_average"] for r in results if r["final_average"] is not None]
        seconds, train = (statistics.mean(r[k] for r in results) for k in COSTS[:2])
        hooks = [r["adjust_seconds"] for r in results if r["adjust_seconds"] is not None]
        hook = f"{statistics.mean(hooks):.0f}" if len(hooks) == len(results) else "–"
        cells = f"{mean_sd(bwt, '+.3f')} | {mean_sd(final)} | {seconds:.0f} | {train:.0f} / {hook}"
        lines.append(f"| {method} | {cells} |")
    text = "\n".join([*lines, "", *matrices])
    outputs.write_json(out / "sequential.json", {"machine": machine.describe(), "args": vars(args), "methods": found})
    outputs.write_text(out / "sequential.md", text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
