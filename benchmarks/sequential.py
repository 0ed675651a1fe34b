"""Three tasks in a row on the embedded model, with and without the forgetting controls.

Stage 1 is the quickstart (ticket triage, exact match); stage 2 continues it on polite Japanese
answers (the keigo pairs' chosen side as SFT rows, chrF); stage 3 continues stage 2 on extracting
orders as JSON (generated here, seeded; exact match). Each preset trains the chain with
`--continue-from`; `full` also replays the earlier stages' training rows (forgetting.rehearsal.source
= [self, earlier runs]). The table is each chain's retention matrix from the last stage's report:
every task's score after every stage, the multiple-choice accuracy, and the KL to the stage before.

Run: python benchmarks/sequential.py [--out runs/sequential] [--presets none full] [--steps 30 20 20]
A finished stage is reused (delete its directory to retrain it). Writes OUT/sequential.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import outputs  # benchmarks/outputs.py: every file written whole
import tasks  # benchmarks/tasks.py: the task data

from forgetless import api
from forgetless.eval import earlier_tasks

STAGES = [("1-triage", "triage"), ("2-keigo", "keigo"), ("3-orders", "orders")]


def chain(out: Path, preset: str, steps: list[int], common: list[str]) -> list[Path]:
    done: list[Path] = []
    for (name, task), n in zip(STAGES, steps, strict=True):
        run = out / preset / name
        if not (run / "summary.json").is_file():
            overrides = [*tasks.overrides(task, out / "data"), *common, f"forgetting.preset={preset}"]
            overrides += [f"train.max_steps={n}", f"output_dir={run}"]
            if done:
                overrides.append(f"model.continue_from={done[-1]}")
                if preset in ("full", "rehearsal"):  # replay every earlier stage's rows beside the base's answers
                    overrides.append(f"forgetting.rehearsal.source=[self, {', '.join(map(str, done))}]")
            started = time.time()
            api.train(api.load_config("quickstart-long", overrides), overwrite=run.exists())
            print(f"[sequential] {preset} {name}: {time.time() - started:.0f} s")
        done.append(run)
    return done


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/sequential")
    ap.add_argument("--presets", nargs="+", default=["none", "full"])
    ap.add_argument("--steps", nargs=3, type=int, default=[30, 20, 20], help="steps of stage 1, 2, 3")
    ap.add_argument("--max-examples", type=int, default=30, help="validation rows scored per task")
    args = ap.parse_args(argv)
    out = Path(args.out)
    common = [f"eval.max_examples={args.max_examples}", "eval.samples=0"]
    common += ["train.eval_every=1000", "train.save_every=1000"]  # no mid-run validation or checkpoints
    lines = ["# Three tasks in a row (benchmarks/sequential.py)", ""]
    for preset in args.presets:
        runs = chain(out, preset, args.steps, common)
        table = earlier_tasks.matrix(runs[-1])
        seconds = sum(json.loads((r / "summary.json").read_text())["wall_seconds"] for r in runs)
        rows = ["| " + " | ".join(r) + " |" for r in table]
        rows.insert(1, "|" + "---|" * len(table[0]))
        lines += [f"## preset {preset} ({seconds:.0f} s for the three stages)", "", *rows, ""]
    text = "\n".join(lines)
    outputs.write_text(out / "sequential.md", text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
