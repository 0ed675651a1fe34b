"""A forgetting budget met over seeds: plain LoRA against forgetless with a KL budget, on the frontier tasks.

For each task (benchmarks/tasks.py) and seed, every run trains the same LoRA with the settings of
benchmarks/frontier.py (the quickstart-long recipe, --steps steps) and is scored by its own final
evaluation (the task's test rows, KL to the base on the held-out general prompts, multiple choice):

  none        plain LoRA: the reference gain and KL
  budget-10   preset full with forgetting.budget.kl = 10% of `none`'s mean KL over the seeds (the user
              states it once; the controller moves λ during training, the dial scales the adapter after)
  budget-25   the same at 25%

With --methods dials (beside or instead of budget), `none`'s adapters are dialled to each budget after
training, as `forgetless tune-scale --max-kl` does, choosing on the task's validation rows (tasks.validation):

  layer-dial-10    per-layer scales (--per-layer: bottom/middle/top thirds, attention/MLP)
  uniform-dial-10  the one scale for every layer that the same search bisected to the budget

The budget is a number stated before training, from `none`'s runs; no setting is chosen on the test rows.
Writes OUT/STEM.json (every run's numbers, the machine) and OUT/STEM.md (mean ± sd per method: gain,
share of `none`'s gain kept, KL, whether each run met its budget) and OUT/STEM.png (gain against KL per
task, every seed, the budget lines); STEM is `budget`, or `layer_dial` when only the dials run.

Run: python benchmarks/budget.py [--out runs/budget] [--tasks triage keigo replies] [--seeds 0 1 2]
     [--fractions 0.10 0.25] [--methods budget dials] [--steps 30] [--max-examples 30]
     [--override KEY=VALUE ...] [--on-validation] [--docs]
--on-validation scores every run on the task's validation rows (tasks.validation) in place of its test rows:
for choosing a setting (e.g. --override forgetting.budget.horizon=3) before the runs that are reported.
A finished run is reused (delete its folder to redo it). --docs also writes docs/STEM.json, the chart as
docs/images/STEM.png and the tables into docs/forgetting.md (between its STEM-table markers).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import machine  # benchmarks/machine.py: the CPU the runs trained on
import outputs  # benchmarks/outputs.py: every file written whole
import tasks  # benchmarks/tasks.py: the task data
from outputs import mean_sd

from forgetless import api
from forgetless.adapters import layer_scales

RECIPE = "quickstart-long"
DOCS = Path(__file__).resolve().parents[1] / "docs"


def shared(task: str, out: Path, args) -> list[str]:
    """The settings every run of `task` shares (frontier.py's), with the evaluation on in training."""
    found = [*tasks.overrides(task, out / "data"), f"train.max_steps={args.steps}", f"model.name={args.model}"]
    found += [f"eval.max_examples={args.max_examples}", "eval.samples=0", "eval.report=false"]
    found += ["eval.before_after=true", "eval.retention=true", "train.eval_every=100000", "train.save_every=100000"]
    if args.on_validation:  # choosing settings: every run scored on the validation rows, never the test rows
        found.append(f"data.validation={tasks.validation(task, out / 'data')}")
    return [*found, *args.override]


def train(common: list[str], extra: list[str], run: Path, seed: int) -> dict:
    """One run (reused when finished): its summary and eval.json."""
    if not (run / "summary.json").is_file():
        started = time.time()
        cfg = api.load_config(RECIPE, [*common, *extra, f"train.seed={seed}", f"output_dir={run}"])
        api.train(cfg, overwrite=run.exists())
        print(f"[budget] {run}: {time.time() - started:.0f} s")
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    return {"summary": summary, "eval": json.loads((run / "eval.json").read_text(encoding="utf-8"))}


def dialled(plain: Path, run: Path, common: list[str], chosen_on: str, limit: float, seed: int, layer_run=None) -> dict:
    """Plain LoRA's adapter (the `none` run at `plain`) dialled to the budget after training, as a user would
    with `forgetless tune-scale --max-kl`: per-layer scales (--per-layer), or with `layer_run` (that search's
    run) the one scale it bisected for every layer. Both choose on the validation rows `chosen_on`; the
    saved adapter is then scored on the test rows by `forgetless eval`, like every other row."""
    if not (run / "eval.json").is_file():
        started = time.time()
        if not run.exists():  # a copy of the plain run to dial (its own eval, report and checkpoints left out)
            skip = shutil.ignore_patterns("checkpoints", "best", "tensorboard", "plots", "report.*", "eval.json")
            shutil.copytree(plain, run.with_name(run.name + ".partial"), ignore=skip, dirs_exist_ok=True)
            run.with_name(run.name + ".partial").rename(run)
        on_validation = api.load_config(RECIPE, [*common, f"data.validation={chosen_on}", f"train.seed={seed}"])
        if layer_run is None:
            api.tune_scale(on_validation, run, limit, None, [1.0], per_layer=True)
        else:  # the layer search's uniform candidate: the largest single scale within the budget, to 1/32
            searched = json.loads((layer_run / "tune_scale.json").read_text(encoding="utf-8"))
            api.tune_scale(on_validation, run, limit, None, [searched["chosen"]])
        api.evaluate(api.load_config(RECIPE, [*common, f"train.seed={seed}"]), str(run), None, run)
        print(f"[budget] {run}: {time.time() - started:.0f} s")
    record = json.loads((run / "tune_scale.json").read_text(encoding="utf-8"))
    ev = json.loads((run / "eval.json").read_text(encoding="utf-8"))
    kl = ev["retention"]["prompts"]["kl_per_token"]
    scale = record.get("layer_scales") or record["chosen"]
    return {"summary": {"budget": {"kl": limit, "met": kl <= limit, "scale": scale}}, "eval": ev}


def row(method: str, seed: int, found: dict, metric: str) -> dict:
    ev, s = found["eval"], found["summary"]
    task, prompts = ev["task"][metric], ev["retention"]["prompts"]
    verdict = s.get("budget") or {}
    return {
        "method": method,
        "seed": seed,
        "base": task["base"],
        "tuned": task["finetuned"],
        "gain": task["finetuned"] - task["base"],
        "kl": prompts["kl_per_token"],
        "agreement": prompts["agreement"],
        "budget": verdict.get("kl"),
        "met": verdict.get("met"),
        "scale": verdict.get("scale"),
        "trained_kl": (verdict.get("trained") or {}).get("kl"),
        "train_seconds": s.get("train_seconds"),
        "wall_seconds": s.get("wall_seconds"),
    }


def _scale(scale) -> str:
    """A run's adapter scale: one number, per-layer scales as the part scaled up and the rest, or – (none)."""
    if isinstance(scale, dict):
        high, low = max(scale.values()), min(scale.values())
        up = sorted(g for g, s in scale.items() if s == high)
        part = next((k for k, v in layer_scales.FAVOURED.items() if sorted(v) == up), "+".join(up))
        return f"{part} {high:.2f}, rest {low:.2f}" if high != low else f"{high:.3f}"
    return "–" if scale is None else f"{scale:.3f}"


def table(task: str, metric: str, rows: list[dict]) -> list[str]:
    none_gain = statistics.mean(r["gain"] for r in rows if r["method"] == "none")
    head = f"| method | budget (KL) | {metric} gain | gain kept vs none | KL to base / token | budget met | "
    head += "adapter scale after the dial | unchanged answers |"
    lines = [f"### {task}", "", head, "|" + "---|" * 8]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        kept = [r["gain"] / none_gain for r in mine] if none_gain else []
        budget = f"{mine[0]['budget']:.4f}" if mine[0]["budget"] is not None else "–"
        met = f"{sum(bool(r['met']) for r in mine)} of {len(mine)}" if mine[0]["budget"] is not None else "–"
        scales = "; ".join(_scale(r["scale"]) for r in mine)
        lines.append(
            f"| {method} | {budget} | {mean_sd([r['gain'] for r in mine])} | "
            f"{mean_sd([100 * k for k in kept], '.0f', '%')} | {mean_sd([r['kl'] for r in mine], '.4f')} | {met} | "
            f"{scales} | {mean_sd([r['agreement'] for r in mine])} |"
        )
    return [*lines, ""]


def chart(results: dict[str, list[dict]], path: Path) -> None:
    """Task gain against KL to base, a panel per task: every seed's point, the budgets as vertical lines."""
    import matplotlib  # only the chart needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the file-only backend
    from matplotlib import ticker

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results) + 1.6, 4.2), squeeze=False)
    colours = {}
    for ax, (task, rows) in zip(axes[0], results.items(), strict=True):
        for r in rows:
            c = colours.setdefault(r["method"], plt.get_cmap("tab10")(len(colours)))
            ax.scatter(r["kl"], r["gain"], color=c, s=40, label=r["method"])
        for budget in sorted({r["budget"] for r in rows if r["budget"] is not None}):
            ax.axvline(budget, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))  # 0.03, not 3×10⁻²
        ax.xaxis.set_minor_locator(ticker.LogLocator(subs=(2, 3, 5)))  # a few labelled in-between ticks that fit
        ax.xaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
        ax.set(title=task, xlabel="KL to base per token (held-out prompts, log)", ylabel="task gain (tuned − base)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    fig.legend(unique.values(), unique.keys(), loc="center right", frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 1.4 / fig.get_figwidth(), 1))
    outputs.save_figure(fig, path)


def run_task(task: str, out: Path, args) -> tuple[list[dict], str]:
    common = shared(task, out, args)
    metric = api.load_config(RECIPE, common).eval.metric
    rows = [row("none", s, train(common, ["forgetting.preset=none"], out / task / "none" / f"seed-{s}", s), metric)
            for s in args.seeds]  # fmt: skip
    reference = statistics.mean(r["kl"] for r in rows)
    for fraction in args.fractions:
        name, limit = f"budget-{round(100 * fraction)}", round(fraction * reference, 5)
        extra = ["forgetting.preset=full", f"forgetting.budget.kl={limit}"]
        for s in args.seeds if "budget" in args.methods else []:
            rows.append(row(name, s, train(common, extra, out / task / name / f"seed-{s}", s), metric))
        if "dials" in args.methods:  # plain LoRA dialled to the same budget after training: per-layer, then uniform
            chosen_on = tasks.validation(task, out / "data")
            for kind in ("layer", "uniform"):
                for s in args.seeds:
                    plain, run = out / task / "none" / f"seed-{s}", out / task / f"{kind}-{name}" / f"seed-{s}"
                    searched = None if kind == "layer" else out / task / f"layer-{name}" / f"seed-{s}"
                    found = dialled(plain, run, common, chosen_on, limit, s, searched)
                    rows.append(row(f"{kind}-dial-{round(100 * fraction)}", s, found, metric))
    return rows, metric


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/budget")
    ap.add_argument("--tasks", nargs="+", default=["triage", "keigo", "replies"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.10, 0.25])
    ap.add_argument("--docs", action="store_true", help="write the results into docs/ too")
    ap.add_argument("--methods", nargs="+", choices=["budget", "dials"], default=["budget"], help="rows beside none")
    ap.add_argument(
        "--on-validation", action="store_true", help="score every run on the task's validation rows (choosing settings)"
    )
    tasks.run_arguments(ap)
    args = ap.parse_args(argv)
    out = Path(args.out)
    results, lines = {}, ["# A forgetting budget over seeds (benchmarks/budget.py)", ""]
    lines += [f"Machine: {machine.line(machine.describe())}; {args.steps} steps, seeds {args.seeds}.", ""]
    for task in args.tasks:
        results[task], metric = run_task(task, out, args)
        lines += table(task, metric, results[task])
    found = {"machine": machine.describe(), "args": vars(args), "tasks": results}
    stem = "budget" if "budget" in args.methods else "layer_dial"
    outputs.write_json(out / f"{stem}.json", found)
    outputs.write_text(out / f"{stem}.md", "\n".join(lines))
    chart(results, out / f"{stem}.png")
    if args.docs:
        outputs.write_json(DOCS / f"{stem}.json", found)
        chart(results, DOCS / "images" / f"{stem}.png")
        text = "\n".join(lines[2:])
        outputs.fill_section(DOCS / "forgetting.md", f"<!-- {stem}-table -->", text, f"<!-- /{stem}-table -->")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
