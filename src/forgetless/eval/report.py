"""report.md and a self-contained report.html for one run or several (`forgetless report RUN_DIR...`).

The report is built once as a list of blocks (heading, paragraph, table, image) and rendered
twice: Markdown (images linked from plots/) and HTML (the same PNGs embedded as base64, so the
file opens in a browser with no network and no neighbouring files). Plots: training and
validation loss, the retention probe over steps, and — for several runs — task score against
KL to the base model, one point per run.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import yaml

from forgetless import files
from forgetless.eval import budget, earlier_tasks, report_plots
from forgetless.training.monitor import UNCHANGED


def read_run(run: Path) -> dict:
    """Everything a report shows of one run directory (missing files read as empty)."""

    def load(name):
        path = run / name
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    metrics = []
    if (run / "metrics.jsonl").exists():
        metrics = files.read_jsonl_records(run / "metrics.jsonl")
    cfg = {}
    if (run / "config.yaml").exists():
        cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    return {
        "name": run.name,
        "dir": run,
        "summary": load("summary.json"),
        "eval": load("eval.json"),
        "data": load("data_check.json"),
        "scale": load("tune_scale.json"),
        "metrics": metrics,
        "metric": cfg.get("eval", {}).get("metric", "exact_match"),
    }


def fmt(x, spec=".3f") -> str:
    """A number for a table, or – when it was not measured."""
    return "–" if x is None else format(x, spec)


def _ci(ci) -> str:
    return "" if not ci else f" [{ci[0]:.2f}, {ci[1]:.2f}]"


def _pair_row(name: str, p: dict, spec: str = ".3f") -> list[str]:
    return [name, fmt(p.get("base"), spec), fmt(p.get("finetuned"), spec), fmt(p.get("diff"), "+" + spec)]


def task_table(ev: dict) -> list[list[str]]:
    rows = [["task metric", "base", "fine-tuned", "difference"]]
    for key, p in ev.get("task", {}).items():
        if isinstance(p, dict) and "finetuned" in p:
            rows.append(_pair_row(key, p, ".2f" if key in ("bleu", "chrf", "perplexity") else ".3f"))
    return rows


def retention_table(ev: dict) -> list[list[str]]:
    r = ev.get("retention", {})
    rows = [["retention", "base", "fine-tuned", "difference (95% CI)"]]
    pr = r.get("prompts")
    if pr and pr.get("not_measured"):
        rows.append(["KL to base per token, unchanged greedy answers", "–", f"not measured: {pr['not_measured']}", ""])
    elif pr:
        rows.append([f"KL to base per token ({pr['n']} held-out prompts)", "0", fmt(pr["kl_per_token"], ".4f"), ""])
        agree = f"{fmt(pr['agreement'])}{_ci(pr.get('agreement_ci'))}"
        rows.append([f"unchanged greedy answers ({pr['n']} prompts)", "1", agree, ""])
    tp = r.get("task_prompts")
    if tp:  # RL's Razor: forgetting tracks this KL, measured on the new task's own prompts
        rows.append(
            [f"KL(base ‖ tuned) per token ({tp['n']} task prompts)", "0", fmt(tp["kl_base_to_tuned"], ".4f"), ""]
        )
    for name, b in r.get("benchmarks", {}).items():
        for key in ("acc", "acc_norm"):
            c = b[key]
            rows.append(
                [
                    f"{name} {key} ({b['n']} questions)",
                    f"{fmt(c['base'])}{_ci(c['base_ci'])}",
                    f"{fmt(c['finetuned'])}{_ci(c['finetuned_ci'])}",
                    f"{fmt(c['diff'], '+.3f')}{_ci(c['diff_ci'])}",
                ]
            )
    for name, p in r.get("general_text", {}).items():
        rows.append(_pair_row(f"perplexity {name}", p, ".2f"))
    for name, p in r.get("lm_eval", {}).items():
        rows.append(_pair_row(f"lm-eval {name}", p))
    return rows


def scale_blocks(t: dict) -> list[tuple]:
    mc = any(p.get("mc_drop") is not None for p in t["points"])  # measured by a budget with an mc_drop bound
    rows = [["scale", f"task {t['metric']}", "KL to base / token"] + (["MC accuracy drop"] if mc else [])]
    for p in t["points"]:
        row = [f"{p['scale']:g}", fmt(p["task"]), fmt(p["kl_per_token"], ".4f")]
        rows.append(row + ([fmt(p["mc_drop"])] if mc else []))
    if t.get("by") == "forgetting.budget":
        limits = [f"{k} ≤ {t[k]}" for k in ("max_kl", "mc_drop") if t.get(k) is not None]
        note = (
            f"The trained adapter was over the forgetting budget ({', '.join(limits)}): it was scaled to "
            f"{t['chosen']:g} by bisection on the held-out prompts (task not scored at each scale) and saved at that "
            "scale. The tables above were measured at that scale."
        )
        return [("h3", "adapter scale dial (forgetting budget)"), ("p", note), ("table", rows)]
    budget = f"KL to base ≤ {t['max_kl']}" if t.get("max_kl") is not None else f"task ≥ {t['min_task']}"
    if t.get("layer_points"):
        return [("h3", "adapter scale dial"), ("table", rows), *layer_blocks(t, budget)]
    note = (
        f"forgetless tune-scale chose scale {t['chosen']:g} for the budget {budget}; the adapter is saved at that "
        "scale. The tables above were measured at scale 1 (as trained); this one on the held-out rows at each scale."
    )
    return [("h3", "adapter scale dial"), ("p", note), ("table", rows)]


def layer_blocks(t: dict, budget: str) -> list[tuple]:
    """tune-scale --per-layer: each candidate (a part at full scale, the rest bisected to the budget)."""
    rows = [["favoured", *t["layer_points"][0]["scales"], f"task {t['metric']}", "KL to base / token"]]
    for p in t["layer_points"]:
        rows.append(
            [p["favoured"], *(f"{s:.3f}" for s in p["scales"].values()), fmt(p["task"]), fmt(p["kl_per_token"], ".4f")]
        )
    kept = t.get("layer_scales")
    what = (
        "per-layer scales " + ", ".join(f"{g} {s:.3f}" for g, s in kept.items())
        if kept
        else f"the uniform scale {t['chosen']:g}"
    )
    note = (
        f"forgetless tune-scale --per-layer kept {what} for the budget {budget} (highest task score; the uniform "
        "scale on a tie); the adapter is saved with it. The tables above were measured at scale 1 (as trained)."
    )
    return [("h3", "per-layer dial"), ("p", note), ("table", rows)]


def text_table(rows: list[list[str]]) -> str:
    """Aligned plain-text table for the terminal."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def print_tables(ev: dict) -> None:
    if len(task_table(ev)) > 1:  # no header over nothing (eval.before_after=false scores no task rows)
        print("\n" + text_table(task_table(ev)))
    if len(retention_table(ev)) > 1:
        print("\n" + text_table(retention_table(ev)))


def data_blocks(d: dict) -> list[tuple]:
    """The training data as `forgetless data check` found it."""
    nd, tokens = d["near_duplicates"], d.get("tokens", {})
    rows = [
        ["rows (valid / read)", f"{d['valid']} / {d['rows']}"],
        ["invalid rows", str(d["errors"]["count"])],
        ["augmented rows", str(d.get("augmented", {}).get("rows", 0))],
        ["tokens p50 / max", f"{tokens.get('p50', '–')} / {tokens.get('max', '–')}"],
        ["over data.max_length", str(tokens.get("over_max_length", "–"))],
        ["languages", ", ".join(f"{k} {v}" for k, v in d["languages"].items())],
        ["exact duplicates", str(d["exact_duplicates"]["rows"])],
        [f"near duplicates (≥{nd['threshold']})", f"{nd['rows']} in {nd['cluster_count']} cluster(s)"],
        ["diversity (distinct bigrams)", str(d["diversity_distinct_2"])],
    ]
    rows += [[f"leakage from {Path(src).name}", f"{x['rows']} of {x['of']}"] for src, x in d["leakage"].items()]
    out: list[tuple] = [("h3", "training data"), ("table", [["data check", "found"], *rows])]
    if d["warnings"]:
        out.append(("p", "warnings: " + "; ".join(d["warnings"])))
    return out


def run_blocks(r: dict) -> list[tuple]:
    """One run: what trained, its data, task and retention tables, samples, matrix, scale dial."""
    out: list[tuple] = []
    s = r["summary"]
    out.append(("h2", f"run {r['name']} ({r['dir']})"))
    if s.get("budget"):  # a run with a forgetting budget opens with whether it was met
        out.append(("p", budget.headline(s["budget"], r["metric"])))
    if s:
        out.append(
            (
                "p",
                f"model {s.get('model')}, preset {s.get('forgetting_preset')}, {s.get('steps')} steps in "
                f"{s.get('train_seconds')} s ({s.get('tokens_per_s')} tokens/s)"
                + (f"; stopped early: {s['stopped_early']}" if s.get("stopped_early") else ""),
            )
        )
        if s.get("adapter_unchanged"):
            out.append(("p", f"warning: {UNCHANGED}"))
    if r["data"]:
        out += data_blocks(r["data"])
    if r["eval"]:
        out += [("table", task_table(r["eval"])), ("table", retention_table(r["eval"]))]
        for i, smp in enumerate(r["eval"].get("task", {}).get("samples", []), start=1):
            out.append(
                (
                    "pre",
                    f"sample {i}: {smp['prompt']}\nexpected:   {smp['reference']}\n"
                    f"base:       {smp['answer_base']}\nfine-tuned: {smp['answer']}",
                )
            )
    table = earlier_tasks.matrix(r["dir"]) if r["summary"].get("continued_from") else None
    if table:
        note = (
            "Task after task (--continue-from): each row is the model after a stage, each task column that "
            "task's metric on its validation rows; – = not measured (a task is first scored just before its "
            "own stage). KL is to the stage before, on the held-out prompts."
        )
        out += [("h3", "retention matrix"), ("p", note), ("table", table)]
    if r["scale"]:
        out += scale_blocks(r["scale"])
    return out


def blocks(runs: list[dict], plots: dict[str, Path]) -> list[tuple]:
    out: list[tuple] = [("h1", "forgetless report")]
    for r in runs:
        out += run_blocks(r)
    if len(runs) > 1:
        out.append(("h2", "runs side by side"))
        head = ["run", f"task {runs[0]['metric']}", "KL to base / token", "KL(base ‖ tuned) task", "unchanged answers"]
        rows = [head]
        for r in runs:
            t = r["eval"].get("task", {}).get(r["metric"], {})
            p = r["eval"].get("retention", {}).get("prompts") or {}
            rows.append(
                [
                    r["name"],
                    f"{fmt(t.get('base'))} → {fmt(t.get('finetuned'))}",
                    fmt(p.get("kl_per_token"), ".4f"),
                    fmt((r["eval"].get("retention", {}).get("task_prompts") or {}).get("kl_base_to_tuned"), ".4f"),
                    fmt(p.get("agreement")),
                ]
            )
        out.append(("table", rows))
    for title, path in plots.items():
        out.append(("img", title, path))
    return out


def to_markdown(bl: list[tuple], base: Path) -> str:
    lines = []
    for b in bl:
        if b[0] in ("h1", "h2", "h3"):
            lines += ["#" * int(b[0][1]) + " " + b[1], ""]
        elif b[0] == "p":
            lines += [b[1], ""]
        elif b[0] == "pre":
            lines += ["```", b[1], "```", ""]
        elif b[0] == "table":
            rows = b[1]
            lines += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
            lines += ["| " + " | ".join(r) + " |" for r in rows[1:]] + [""]
        elif b[0] == "img":
            lines += [f"![{b[1]}]({b[2].relative_to(base).as_posix()})", ""]
    return "\n".join(lines)


def to_html(bl: list[tuple]) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>forgetless report</title><style>",
        "body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}pre{background:#f5f5f5;padding:8px;"
        "white-space:pre-wrap}</style></head><body>",
    ]
    for b in bl:
        if b[0] in ("h1", "h2", "h3"):
            parts.append(f"<{b[0]}>{e(b[1])}</{b[0]}>")
        elif b[0] == "p":
            parts.append(f"<p>{e(b[1])}</p>")
        elif b[0] == "pre":
            parts.append(f"<pre>{e(b[1])}</pre>")
        elif b[0] == "table":
            head = "".join(f"<th>{e(c)}</th>" for c in b[1][0])
            body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b[1][1:])
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif b[0] == "img":
            data = base64.b64encode(b[2].read_bytes()).decode()
            parts.append(f"<h3>{e(b[1])}</h3><img alt='{e(b[1])}' src='data:image/png;base64,{data}'>")
    return "".join(parts) + "</body></html>"


def write(run_dirs: list[Path], out: Path) -> tuple[Path, Path]:
    """Write out/report.md, out/report.html and out/plots/*.png for the given runs."""
    runs = [read_run(Path(d)) for d in run_dirs]
    (out / "plots").mkdir(parents=True, exist_ok=True)
    plots = {}
    for title, name, fn in (
        ("training and validation loss", "loss.png", report_plots.plot_losses),
        ("retention probe during training", "retention_probe.png", report_plots.plot_probe),
        ("task score versus retention", "tradeoff.png", report_plots.plot_tradeoff),
        ("adapter scale dial", "scale.png", report_plots.plot_scale),
    ):
        path = out / "plots" / name
        if fn(runs, path):
            plots[title] = path
        elif path.exists():
            path.unlink()
    bl = blocks(runs, plots)
    md, page = out / "report.md", out / "report.html"
    files.write_text(md, to_markdown(bl, out))
    files.write_text(page, to_html(bl))
    return md, page
