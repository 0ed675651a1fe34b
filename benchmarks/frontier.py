"""Forgetting head-to-head: forgetless's presets against TRL's SFT and SDFT trainers and replay-only.

For each task (benchmarks/tasks.py: triage, keigo, replies) every method trains the same LoRA
(r, alpha, dropout, all-linear; the task config's learning rate and schedule) for the same number of
steps on the same rows, and every result is scored by the same forgetless evaluation (`forgetless eval`
of its adapter): the task metric, KL to the base on held-out general prompts, unchanged greedy answers,
multiple choice with CIs, and KL(base ‖ tuned) on the task's own validation prompts (RL's Razor).

Methods:
  none, lwf, rehearsal, full  forgetless presets (rehearsal = the base model's own answers, 20% of a batch)
  replay-10, replay-30        replay only, no LwF: forgetless's rehearsal at ratio 0.1 (4 rows in every 9
                              batches of 4 = 10%) / 0.3 (2 rows per batch of 4 = 33%)
  on-policy                   full with on-policy replay (forgetting.rehearsal.source=on_policy): the current
                              model's own answers to general prompts, kept within on_policy.max_kl, replayed
  trl-sft                     TRL SFTTrainer + PEFT, loss on the answers (its prompt-completion default)
  trl-sdft                    TRL's experimental SDFTTrainer + PEFT with its defaults (on-policy samples,
                              teacher = the base, adapter off, conditioned on the demonstration), except
                              num_generations=4 and max_completion_length=64 (CPU time), 4 prompts a step

Beside the table of each task: SDFT's teacher scored on its own (the base model answering with the
reference answer in its prompt), which bounds what self-distillation can teach.

Run: python benchmarks/frontier.py [--out runs/frontier] [--tasks triage keigo replies] [--methods ...]
     [--seeds 0 1 2] [--steps 30] [--model NAME] [--max-examples 30]
Every method trains once per seed (train.seed; TRL's seed), in OUT/TASK/METHOD/seed-N. A finished run is
reused (delete its folder to redo it), so the seeds can be run a few at a time. `--keep FILE` (a frontier.json
this script wrote, e.g. docs/frontier_keigo.json) adds the rows measured earlier for the methods and seeds not
run now, so one method can be added to a published table without its runs' folders; FILE must come from the
same machine (CPU, vector flags, cores, torch) and settings (--steps, --model, --max-examples, --override),
or the script stops before anything trains. Writes OUT/frontier.md (a
table per task: mean ± sd over the seeds, gain kept against `none`'s mean gain), OUT/frontier.json (every
run's row, and the machine) and OUT/frontier.png (task gain against KL to base, every run; one panel per task).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import machine  # benchmarks/machine.py: the CPU the runs trained on
import outputs  # benchmarks/outputs.py: every file written whole
import tasks  # benchmarks/tasks.py: the task data
from outputs import mean_sd

from forgetless import api
from forgetless.config.schema import Config
from forgetless.data.build import read_all
from forgetless.data.formats import ReadReport
from forgetless.eval.metrics import score
from forgetless.model import hardware
from forgetless.model import loader as models
from forgetless.model.generate import generate, split_prompt
from forgetless.recipes import evaluate

RECIPE = "quickstart-long"  # the lr, schedule and eval settings under every task (steps: --steps)
PRESETS = {
    "none": ["forgetting.preset=none"],
    "lwf": ["forgetting.preset=lwf"],
    "rehearsal": ["forgetting.preset=rehearsal"],
    "full": ["forgetting.preset=full"],
    "replay-10": ["forgetting.preset=rehearsal", "forgetting.rehearsal.ratio=0.1"],
    "replay-30": ["forgetting.preset=rehearsal", "forgetting.rehearsal.ratio=0.3"],
    "on-policy": ["forgetting.preset=full", "forgetting.rehearsal.source=on_policy"],
}
METHODS = [*PRESETS, "trl-sft", "trl-sdft"]


def task_overrides(task: str, out: Path, args) -> list[str]:
    """The settings every method of `task` shares, as forgetless overrides of the quickstart recipe."""
    overrides = [*tasks.overrides(task, out / "data"), f"train.max_steps={args.steps}", f"model.name={args.model}"]
    overrides += [f"eval.max_examples={args.max_examples}", "eval.samples=0", "eval.report=false"]
    return [*overrides, "train.eval_every=100000", "train.save_every=100000", *args.override]


def prompts_and_answers(cfg: Config) -> list[tuple[list[dict], str]]:
    """The task's training conversations as forgetless renders them: (prompt messages, answer)."""
    examples = read_all(cfg.data.train, cfg.data, ReadReport())
    return [split_prompt(e.messages, cfg.data.system_prompt) for e in examples if e.messages]


def train_forgetless(shared: list[str], method: str, run: Path) -> None:
    overrides = [*PRESETS[method], f"output_dir={run}", "eval.before_after=false", "eval.retention=false"]
    api.train(api.load_config(RECIPE, [*shared, *overrides]), overwrite=run.exists())


def _lora(cfg: Config):
    from peft import LoraConfig  # only the TRL methods build a PEFT config by hand

    p = cfg.peft
    return LoraConfig(r=p.r, lora_alpha=p.alpha, lora_dropout=p.dropout, target_modules=p.target_modules)


def _trl_common(cfg: Config, run: Path) -> dict:
    t = cfg.train
    return {
        "output_dir": str(run / "trl"),
        "max_steps": t.max_steps,
        "learning_rate": cfg.lr,
        "lr_scheduler_type": t.scheduler,
        "warmup_steps": t.warmup_ratio,  # transformers 5: a float below 1 is a share of the steps
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "seed": t.seed,
        "save_strategy": "no",
        "report_to": [],
        "logging_steps": 5,
        "use_cpu": hardware.device().type == "cpu",
        "bf16": False,
    }


def train_trl(cfg: Config, method: str, run: Path) -> None:
    """TRL's trainer on the same base, rows and LoRA; the adapter saved where `forgetless eval` reads it."""
    from datasets import Dataset  # TRL's input type; only these two methods need it

    model, tokenizer, _ = models.load(cfg.model, hardware.device())
    pairs = prompts_and_answers(cfg)
    if method == "trl-sft":
        from trl import SFTConfig, SFTTrainer  # imported per method: SDFT is experimental and slower to import

        data = Dataset.from_list([{"prompt": p, "completion": [{"role": "assistant", "content": a}]} for p, a in pairs])
        settings = SFTConfig(
            **_trl_common(cfg, run), per_device_train_batch_size=cfg.train.batch_size, max_length=cfg.data.max_length
        )
        trainer = SFTTrainer(model, settings, train_dataset=data, processing_class=tokenizer, peft_config=_lora(cfg))
    else:
        from trl.experimental.sdft import SDFTConfig, SDFTTrainer  # as above

        tokenizer.padding_side = "left"  # generation pads on the left
        data = Dataset.from_list([{"prompt": p, "privileged_context": a} for p, a in pairs])
        generations = 4
        settings = SDFTConfig(
            **_trl_common(cfg, run),
            per_device_train_batch_size=cfg.train.batch_size * generations,
            num_generations=generations,
            max_completion_length=64,
        )
        trainer = SDFTTrainer(model, settings, train_dataset=data, processing_class=tokenizer, peft_config=_lora(cfg))
    trainer.train()
    trainer.model.save_pretrained(run / "adapter")
    tokenizer.save_pretrained(run / "adapter")


def sdft_teacher(cfg: Config, task_dir: Path) -> dict:
    """What SDFT's teacher can teach: the base model's greedy answers with the reference answer itself in
    its prompt (TRL's default teacher prompt, "{prompt}\\n\\n{demonstration}"), scored like the task. On-policy
    self-distillation pulls the student towards these answers; if they miss the format, it has nothing to
    pull towards."""
    found = task_dir / "sdft-teacher.json"
    if found.is_file():
        return json.loads(found.read_text(encoding="utf-8"))
    model, tokenizer, _ = models.load(cfg.model, hardware.device())
    rows = [e for e in read_all(cfg.data.validation, cfg.data, ReadReport()) if e.messages][: cfg.eval.max_examples]
    pairs = [split_prompt(e.messages, cfg.data.system_prompt) for e in rows]
    prompts = [[*p[:-1], {"role": "user", "content": f"{p[-1]['content']}\n\n{answer}"}] for p, answer in pairs]
    answers = generate(model, tokenizer, prompts, cfg.eval.max_new_tokens, desc="sdft teacher: answers")
    result = {"n": len(rows), **score(answers, [a for _, a in pairs], cfg.eval.labels, cfg.eval.custom_metrics)}
    result["samples"] = [{"reference": r, "teacher": a} for (_, r), a in zip(pairs[:3], answers, strict=False)]
    outputs.write_json(found, result)
    return result


def run_method(shared: list[str], method: str, run: Path) -> dict:
    """Train (unless a finished result is there), then score with forgetless's own evaluation."""
    summary_file = run / "frontier.json"
    if summary_file.is_file():
        return json.loads(summary_file.read_text(encoding="utf-8"))
    cfg = api.load_config(RECIPE, shared)
    started = time.time()
    if method in PRESETS:
        train_forgetless(shared, method, run)
    else:
        run.mkdir(parents=True, exist_ok=True)
        train_trl(cfg, method, run)
    trained = time.time() - started
    result = evaluate.run(cfg, str(run), None, run / "eval")
    found = {"method": method, "train_seconds": round(trained, 1), "eval": result}
    outputs.write_json(summary_file, found)
    print(f"[frontier] {run}: trained in {trained:.0f} s")
    return found


def row(found: dict, metric: str, seed: int) -> dict:
    ev = found["eval"]
    t = ev["task"][metric]
    r = ev["retention"]
    bench = next(iter(r.get("benchmarks", {}).values()), None)
    return {
        "method": found["method"],
        "seed": seed,
        "base": t["base"],
        "tuned": t["finetuned"],
        "gain": t["finetuned"] - t["base"],
        "kl": r["prompts"]["kl_per_token"],
        "kl_task": r["task_prompts"]["kl_base_to_tuned"],
        "agreement": r["prompts"]["agreement"],
        "mc": bench["acc"]["finetuned"] if bench else None,
        "mc_diff": bench["acc"]["diff"] if bench else None,
        "mc_ci": bench["acc"]["diff_ci"] if bench else None,
        "train_seconds": found["train_seconds"],
    }


def table(task: str, metric: str, rows: list[dict]) -> list[str]:
    """Mean ± sd over the seeds per method; gain kept against `none`'s mean gain (– without `none`). One
    seed: its multiple-choice difference with its 95% CI; several: the differences' mean ± sd."""
    nones = [r["gain"] for r in rows if r["method"] == "none"]
    none_gain = statistics.mean(nones) if nones else None
    head = f"| method | {metric} base → tuned | gain kept vs none | KL to base / token | KL(base ‖ tuned) task "
    head += "| unchanged answers | MC acc (Δ) | train s | seeds |"
    lines = [f"### {task}", "", head, "|" + "---|" * 9]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        kept = mean_sd([100 * r["gain"] / none_gain for r in mine], ".0f", "%") if none_gain else "–"
        mcs = [r for r in mine if r["mc"] is not None]
        if not mcs:
            mc = "–"
        elif len(mcs) == 1:
            r = mcs[0]
            mc = f"{r['mc']:.3f} ({r['mc_diff']:+.3f} [{r['mc_ci'][0]:+.2f}, {r['mc_ci'][1]:+.2f}])"
        else:
            mc = f"{mean_sd([r['mc'] for r in mcs])} ({mean_sd([r['mc_diff'] for r in mcs], '+.3f')})"
        lines.append(
            f"| {method} | {mine[0]['base']:.3f} → {mean_sd([r['tuned'] for r in mine])} | {kept} "
            f"| {mean_sd([r['kl'] for r in mine], '.4f')} | {mean_sd([r['kl_task'] for r in mine])} "
            f"| {mean_sd([r['agreement'] for r in mine])} | {mc} "
            f"| {mean_sd([r['train_seconds'] for r in mine if r['train_seconds'] is not None], '.0f')} | {len(mine)} |"
        )
    return [*lines, ""]


MARKERS = {"none": "o", "lwf": "o", "rehearsal": "o", "full": "o", "on-policy": "o", "replay-10": "s", "replay-30": "s"}


def chart(results: dict[str, list[dict]], path: Path) -> None:
    """Task gain against KL to base, a panel per task; a colour per method and one legend (labels on
    the points would overlap: several methods land on nearly the same point); circles = forgetless
    presets, squares = replay only, triangles = TRL."""
    import matplotlib  # only the chart needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the file-only backend

    colours = {m: plt.get_cmap("tab10")(i) for i, m in enumerate(METHODS)}
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results) + 1.6, 4.2), squeeze=False)
    for ax, (task, rows) in zip(axes[0], results.items(), strict=True):
        for method in dict.fromkeys(r["method"] for r in rows):  # every seed's point, one legend entry
            mine = [r for r in rows if r["method"] == method]
            marker = MARKERS.get(method, "^")
            kls, gains = [r["kl"] for r in mine], [r["gain"] for r in mine]
            ax.scatter(kls, gains, color=colours[method], marker=marker, s=55, label=method)
        ax.set_xscale("log")
        ax.set(title=task, xlabel="KL to base per token (held-out prompts, log)", ylabel="task gain (tuned − base)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 1.4 / fig.get_figwidth(), 1))
    outputs.save_figure(fig, path)


# what the published tables were run with (tasks.run_arguments' defaults), for files that predate "settings"
DEFAULT_SETTINGS = {"steps": 30, "model": "smollm2-135m-instruct", "max_examples": 30, "override": []}


def read_kept(path: Path, cpu: dict, settings: dict) -> dict:
    """An earlier frontier.json for `--keep`, checked before anything trains: a missing or unreadable file,
    another machine's (CPU, vector flags, cores, torch) or other settings' (steps, model, rows scored) is
    refused in one line. A file written before the settings were recorded is taken as the defaults'."""
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"--keep {path}: cannot read it ({e.__class__.__name__}: {e}); give a frontier.json this script wrote")
    if earlier.get("machine") != cpu:
        sys.exit(
            f"--keep {path}: measured on {earlier.get('machine')}, not on this machine ({cpu}); "
            "rows from different machines are not mixed: run every method here instead"
        )
    kept = earlier.get("settings", DEFAULT_SETTINGS)
    if kept != settings:
        sys.exit(f"--keep {path}: measured with {kept}, not with this run's {settings}: rows are not mixed")
    return earlier


def kept_rows(earlier: dict, task: str, rows: list[dict]) -> list[dict]:
    """`rows` (this invocation's) with an earlier frontier.json's rows for `task` that were not run again, in
    the file's order of methods (a method new to it last), seeds in order within a method."""
    run_now = {(r["method"], r["seed"]) for r in rows}
    old = earlier.get(task, [])
    merged = [r for r in old if (r["method"], r["seed"]) not in run_now] + rows
    order = list(dict.fromkeys(r["method"] for r in [*old, *rows]))
    return sorted(merged, key=lambda r: (order.index(r["method"]), r["seed"]))


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/frontier")
    ap.add_argument("--tasks", nargs="+", default=["triage", "keigo", "replies"])
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--keep", type=Path, help="an earlier frontier.json whose other rows join the tables")
    tasks.run_arguments(ap)
    args = ap.parse_args(argv)
    out = Path(args.out)
    cpu = machine.describe()
    settings = {"steps": args.steps, "model": args.model, "max_examples": args.max_examples, "override": args.override}
    earlier = read_kept(args.keep, cpu, settings) if args.keep else None  # refused before hours of training
    lines = ["# Forgetting head-to-head (benchmarks/frontier.py)", "", f"Machine: {machine.line(cpu)}.", ""]
    results: dict[str, list[dict]] = {}
    for task in args.tasks:
        shared = task_overrides(task, out, args)
        cfg = api.load_config(RECIPE, shared)
        metric = cfg.eval.metric
        rows = [
            row(run_method([*shared, f"train.seed={seed}"], m, out / task / m / f"seed-{seed}"), metric, seed)
            for m in args.methods
            for seed in args.seeds
        ]
        results[task] = kept_rows(earlier, task, rows) if earlier else rows
        lines += table(task, metric, results[task])
        if "trl-sdft" in args.methods:
            teacher = sdft_teacher(cfg, out / task)
            lines += [
                f"SDFT's teacher (the base with the reference answer in its prompt), greedy: {metric} "
                f"{teacher[metric]:.3f} on the same {teacher['n']} rows.",
                "",
            ]
    outputs.write_text(out / "frontier.md", "\n".join(lines))
    outputs.write_json(out / "frontier.json", {"machine": cpu, "settings": settings, **results})
    chart(results, out / "frontier.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
