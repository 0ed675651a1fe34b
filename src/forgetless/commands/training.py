"""The subcommands that train and measure: train, eval, report, compare, tune-scale, rehearsal.

Each has a parser builder (`*_parser`) and a handler; the handler asks api.py for the work and prints
what the terminal shows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from forgetless import api
from forgetless.commands.arguments import config_and_overrides, config_items, run_dir, scales, subcommand
from forgetless.config import loader
from forgetless.errors import UserError
from forgetless.training.monitor import UNCHANGED


def train_parser(t: argparse.ArgumentParser) -> None:
    config_items(t)
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run in output_dir")
    t.add_argument("--help-config", action="store_true", help="list every config key with default and help")
    t.add_argument("--auto", action="store_true", help="let the planner pick precision, 4-bit and batch settings")
    t.add_argument(
        "--recipe", choices=["sft", "dpo", "reward", "rlhf", "grpo"], help="shorthand for the override recipe=NAME"
    )
    t.add_argument(
        "--continue-from",
        metavar="RUN",
        help="task after task: continue RUN's LoRA adapter, with RUN's model as the LwF teacher, retention "
        "reference and 'before' side (= model.continue_from=RUN)",
    )
    t.add_argument(
        "--launch",
        type=int,
        default=None,
        metavar="N",
        help="start N local processes with accelerate (data parallel; CPU processes use gloo)",
    )


def train(args: argparse.Namespace) -> int:
    if args.help_config:
        print(loader.describe())
        return 0
    if args.launch is not None:  # --launch 0 is refused there, not taken for "no launcher"
        return launch(args)
    path, items = config_and_overrides(args.items)
    items = ([f"recipe={args.recipe}"] if args.recipe else []) + items
    items = ([f"model.continue_from={args.continue_from}"] if args.continue_from else []) + items
    cfg = api.load_config(path, items)
    if args.auto:
        plan, suggested = api.auto_overrides(cfg)
        if api.is_main_process():
            print(api.render_plan(plan) + "\n")
        if not plan.fits:
            raise UserError("--auto: no setting fits this hardware (see the plan above)")
        cfg = api.load_config(path, suggested + items)  # the user's own overrides still win
    if api.is_main_process():  # once, not per launched process
        print(f"[forgetless] config: {api.config_path(path)}; output_dir: {cfg.output_dir}")
    summary = api.train(cfg, resume=args.resume, overwrite=args.overwrite)
    if "output_dir" in summary:  # under a launcher, only the main process has the full summary
        print_summary(summary)
    return 0


def launch(args: argparse.Namespace) -> int:
    if args.launch < 1:
        raise UserError(f"--launch {args.launch}: give the number of local processes (1 or more)")
    cmd = api.launch_command(args.launch, args.argv)
    print(f"[forgetless] launching {args.launch} processes: {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd)


def print_summary(s: dict) -> None:
    print(
        f"\n[forgetless] trained {s['steps']} steps in {s['train_seconds']:.0f} s "
        f"({s['tokens_per_s']:.0f} tokens/s, effective batch {s['effective_batch']}); "
        f"wall time {s['wall_seconds']:.0f} s"
        + (f"; stopped early ({s['stopped_early']})" if s.get("stopped_early") else "")
    )
    for note in s.get("data_notes", []):
        print(f"[forgetless] data: {note}")
    if s.get("adapter_unchanged"):
        print(f"[forgetless] warning: {UNCHANGED}")
    ev_path = Path(s["output_dir"]) / "eval.json"
    if not ev_path.exists():
        return
    ev = json.loads(ev_path.read_text(encoding="utf-8"))
    api.result_tables(ev)
    for i, smp in enumerate(ev.get("task", {}).get("samples", []), start=1):
        print(f"\n--- sample {i}: {smp['prompt'][:300]}")
        print(f"expected : {smp['reference']}")
        print(f"before   : {smp['answer_base'][:300]}")
        print(f"after    : {smp['answer'][:300]}")
    if (Path(s["output_dir"]) / "report.html").exists():
        print(f"\n[forgetless] report: {s['output_dir']}/report.md and report.html")


def eval_parser(v: argparse.ArgumentParser) -> None:
    config_items(v)
    v.add_argument("--run", default=None, help="a run directory: its config, adapter and held-out data")
    v.add_argument("--adapter", default=None, help="adapter directory to evaluate on top of model.name")
    v.add_argument("--base", default=None, help="base model to compare a merged model with")
    v.add_argument("--out", default=None, help="output folder (default RUN/eval, else runs/eval)")


def evaluate(args: argparse.Namespace) -> int:
    path, items = config_and_overrides(args.items)
    adapter, out = args.adapter, args.out
    if args.run:
        run = run_dir(args.run, "; give --adapter DIR instead")
        path = path or str(run / "config.yaml")
        adapter = adapter or str(run / "adapter")
        out = out or str(run / "eval")
    result = api.evaluate(api.load_config(path, items), adapter, args.base, Path(out or "runs/eval"))
    api.result_tables(result)
    print(f"\n[forgetless] eval.json and report written to {out or 'runs/eval'}")
    return 0


def report_parser(o: argparse.ArgumentParser) -> None:
    o.add_argument("runs", nargs="+", metavar="RUN_DIR")
    o.add_argument("--out", default=None, help="output folder (default: the run itself, or runs/report)")


def report(args: argparse.Namespace) -> int:
    runs = [Path(r) for r in args.runs]
    for r in runs:
        if not (r / "summary.json").is_file() and not (r / "eval.json").is_file():
            raise UserError(f"{r} has no summary.json or eval.json; is it a forgetless run directory?")
    out = Path(args.out) if args.out else (runs[0] if len(runs) == 1 else Path("runs/report"))
    md, page = api.report(runs, out)
    print(f"[forgetless] report: {md} and {page}")
    return 0


def compare_parser(m: argparse.ArgumentParser) -> None:
    config_items(m)
    m.add_argument(
        "--variants",
        default="none,lwf,rehearsal,full",
        help="comma-separated forgetting presets, and budget (preset full under the config's forgetting.budget)",
    )
    m.add_argument("--overwrite", action="store_true", help="retrain variants whose run directories hold other runs")


def compare(args: argparse.Namespace) -> int:
    path, items = config_and_overrides(args.items)
    cfg = api.load_config(path, items)
    presets = [v.strip() for v in args.variants.split(",") if v.strip()]
    _, table = api.compare(cfg, presets, overwrite=args.overwrite)
    print(f"\n{table}\n\n[forgetless] table written to {cfg.output_dir}/compare.md")
    return 0


def tune_scale_parser(t: argparse.ArgumentParser) -> None:
    t.add_argument("run", metavar="RUN_DIR")
    config_items(t, "overrides of the run's config (eval.*)", "KEY=VALUE")
    budget = t.add_mutually_exclusive_group(required=True)
    budget.add_argument("--max-kl", type=float, help="largest scale whose KL to base per token is at most this")
    budget.add_argument("--min-task", type=float, help="smallest scale whose task score is at least this")
    t.add_argument("--grid", type=scales, default=[0.25, 0.5, 0.75, 1.0], help="scales to score (default 0.25..1)")
    t.add_argument(
        "--per-layer",
        action="store_true",
        help="with --max-kl: also search separate scales for the layers' thirds and attention vs MLP",
    )


def tune_scale(args: argparse.Namespace) -> int:
    run = run_dir(args.run)
    cfg = api.load_config(str(run / "config.yaml"), args.items)
    t = api.tune_scale(cfg, run, args.max_kl, args.min_task, args.grid, args.per_layer)
    chosen = f"scale {t['chosen']:g}"
    if t.get("layer_scales"):
        chosen = "per-layer scales " + ", ".join(f"{g} {s:.3f}" for g, s in t["layer_scales"].items())
    print(f"[forgetless] tune-scale: {chosen} saved with {run / 'adapter'}; curve in {run / 'report.html'}")
    return 0


def rehearsal_parser(r: argparse.ArgumentParser) -> None:
    g = subcommand(
        r.add_subparsers(dest="action", required=True),
        "generate",
        "generate and cache them now (training does it on first use otherwise)",
    )
    config_items(g)
    g.add_argument("--out", default=None, help="write into this folder instead of the cache")
    g.add_argument("--force", action="store_true", help="generate even when a cached file exists")


def rehearsal(args: argparse.Namespace) -> int:
    path, items = config_and_overrides(args.items)
    out = Path(args.out) if args.out else None
    for what, made, generated in api.reference_answers(api.load_config(path, items), out, args.force):
        print(f"[forgetless] {what} ({'generated' if generated else 'cached'}): {made}")
    return 0
