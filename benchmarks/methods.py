"""Every fine-tuning method on the quickstart: what it trains, what it costs, what it learns and keeps.

Each method trains the quickstart (embedded SmolLM2-135M-Instruct, the help-desk triage task,
60 steps, forgetting preset `full`) in its own process, so that one method's peak memory cannot
show up in another's. The learning rate is each method's literature default times 5, the same
factor the quickstart applies to LoRA (1e-3 instead of 2e-4) to learn in 60 steps. A finished
run with the same settings is reused. BitFit is listed with its refusal: SmolLM2, like every
Llama-family model, has no bias terms.

Run: python benchmarks/methods.py [--methods lora,ia3] [--out docs/methods.md] [overrides ...]
(the table goes between the <!-- methods-table --> markers of --out; the rows to docs/methods.json)
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import outputs  # benchmarks/outputs.py: every file written whole

from forgetless import api
from forgetless.config.schema import DEFAULT_LR, METHODS
from forgetless.errors import UserError
from forgetless.recipes import compare

RECIPE = "quickstart-long"  # the quickstart at its original 60 steps (the five-minute one is hotter)
QUICKSTART_FACTOR = 5  # quickstart-long.yaml: LoRA at 1e-3 = 5 x the literature's 2e-4
MARK = "<!-- methods-table -->"


def overrides_for(method: str) -> list[str]:
    return [f"peft.method={method}", f"train.lr={DEFAULT_LR[method] * QUICKSTART_FACTOR:g}"]


def train(method: str, base: list[str], root: Path) -> dict | str:
    """The run's summary (trained now or reused), or the one-line refusal of a method that cannot train."""
    try:
        cfg = api.load_config(RECIPE, [*base, f"output_dir={root}"])
        vcfg = compare.variant_config(cfg, method, overrides_for(method))
    except UserError as e:
        return str(e)
    done = compare._finished(vcfg)
    if done is not None:
        print(f"[methods] reusing {vcfg.output_dir}")
        return done
    cmd = [sys.executable, "-m", "forgetless", "train", RECIPE, *base]
    cmd += [*overrides_for(method), f"output_dir={vcfg.output_dir}", "--overwrite"]
    print(f"[methods] {' '.join(cmd[2:])}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
        return lines[-1].removeprefix("forgetless: error: ") if lines else f"exit {proc.returncode}"
    return json.loads((Path(vcfg.output_dir) / "summary.json").read_text(encoding="utf-8"))


def step_seconds(method: str, steps: int = 4, warmup: int = 2) -> float:
    """Seconds per training step of `method` on quickstart micro-batches (4 task rows, LwF on), timed
    in this process alone: the full runs' train seconds depend on whatever else shares the CPU."""
    import time

    import torch

    from forgetless.adapters import attaching
    from forgetless.data.batching import Batches
    from forgetless.data.build import build
    from forgetless.model import loader as models
    from forgetless.objectives.sft import counts, objective
    from forgetless.training import optim

    cfg = api.load_config(RECIPE, overrides_for(method) + ["forgetting.preset=lwf"])
    torch.manual_seed(0)
    model, tok, path = models.load(cfg.model)
    model = attaching.attach(model, cfg.peft, quantized=False, grad_checkpointing=False, model_path=path)
    rows = build(cfg.data, tok, 0).train
    batches = list(Batches(rows, 4, 0, tok.pad_token_id).epoch(0))[: warmup + steps]
    opt = optim.make_optimizer(model, cfg.train.model_copy(update={"lr": cfg.lr}))
    loss_fn = objective(cfg.forgetting).loss
    model.train()
    for i, b in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        norms = {k: max(v, 1) for k, v in counts(b, cfg.forgetting).items()}
        sum(loss_fn(model, b, norms).values()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def row(method: str, s: dict | str, metric: str) -> dict:
    if isinstance(s, str):
        return {"method": method, "refused": s}
    r = compare.row(method, s, metric)
    steps = max(s["steps"], 1)
    return (
        r
        | {
            "method": method,
            "lr": DEFAULT_LR[method] * QUICKSTART_FACTOR,
            "trainable": s["trainable_parameters"],
            "share": s["trainable_parameters"] / s["total_parameters"],
            "peak_memory_gb": s.get("peak_memory_gb"),
            "step_seconds": s["train_seconds"] / steps,
            "tokens_per_s": s["tokens_per_s"],
        }
        | _choice(Path(s["output_dir"]))
    )


def _choice(run: Path) -> dict:
    """Multiple-choice retention (the bundled general-knowledge items), base -> fine-tuned accuracy."""
    bench = json.loads((run / "eval.json").read_text(encoding="utf-8"))["retention"].get("benchmarks") or {}
    acc = next(iter(bench.values()), {}).get("acc") or {}
    return {"mc_base": acc.get("base"), "mc_after": acc.get("finetuned")}


def table(rows: list[dict], metric: str) -> str:
    lines = [
        f"| method | lr | trainable params | share | peak RSS GB | s / step (run; isolated) | {metric} before → after "
        "| KL to base / token | unchanged greedy answers | multiple choice base → after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['method']} | – | – | – | – | – | refused: {r['refused']} | – | – | – |")
            continue
        lines.append(
            f"| {r['method']} | {r['lr']:g} | {r['trainable']:,} | {100 * r['share']:.3f}% "
            f"| {r['peak_memory_gb']:.2f} | {r['step_seconds']:.2f}; {_iso(r)} | {r['before']:.3f} → {r['after']:.3f} "
            f"| {r['kl_per_token']:.4f} | {100 * r['agreement']:.0f}% | {r['mc_base']:.3f} → {r['mc_after']:.3f} |"
        )
    return "\n".join(lines)


def _iso(r: dict) -> str:
    return f"{r['isolated_step_seconds']:.2f}" if "isolated_step_seconds" in r else "–"


def write(out: Path, text: str) -> None:
    machine = f"{platform.machine()}, {__import__('os').cpu_count()} CPU cores, {platform.python_version()}"
    outputs.fill_section(out, MARK, f"{text}\n\nMachine: {machine}.")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default="docs/methods.md")
    ap.add_argument("--root", default="runs/methods")
    ap.add_argument("--timing", action="store_true", help="also time steps per method with nothing else running")
    args, base = ap.parse_known_args(argv)
    metric = api.load_config(RECIPE, base).eval.metric
    rows = [row(m, train(m, base, Path(args.root)), metric) for m in args.methods.split(",")]
    for r in rows:
        if args.timing and "refused" not in r:
            r["isolated_step_seconds"] = step_seconds(r["method"])
    text = table(rows, metric)
    print(text)
    outputs.write_json(Path(args.out).with_suffix(".json"), rows)
    write(Path(args.out), text)


if __name__ == "__main__":
    main(sys.argv[1:])
