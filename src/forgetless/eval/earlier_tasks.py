"""Task after task: the runs a continuation descends from (--continue-from), their tasks scored again
on the new model, and the retention matrix of the report (every task's score after every stage).

A stage's own eval.json already holds its task before and after and its retention against the stage
it continued; this adds the earlier tasks, so forgetting of task A while learning B and C shows.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from forgetless.data.build import of_run
from forgetless.errors import UserError
from forgetless.eval.task import task_eval


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def earlier_runs(ref: str | Path) -> list[Path]:
    """`ref` and the runs it continues in turn, oldest first."""
    chain: list[Path] = []
    current: Path | None = Path(ref).resolve()
    while current is not None and current not in chain:
        chain.insert(0, current)
        before = _read(current / "summary.json").get("continued_from")
        current = Path(before).resolve() if before else None
    return chain


def score_earlier(model, tokenizer, runs: list[Path]) -> dict:
    """Each earlier run's task metric on its own validation rows, answered by `model` (its settings:
    system prompt, metric, labels, generation length come from that run's config.yaml)."""
    scores = {}
    for run in runs:
        try:
            cfg, data = of_run(run, tokenizer)
            examples = data.validation_examples
        except UserError as e:  # a moved data file must not cost the run its other results
            print(f"[forgetless] earlier task {run.name} not scored: {e}")
            scores[run.name] = {"run": str(run), "error": str(e)}
            continue
        print(f"[forgetless] scoring the earlier task of {run.name} ({len(examples)} validation rows) ...")
        found = task_eval(model, tokenizer, examples, cfg)
        scores[run.name] = {"run": str(run), "metric": cfg.eval.metric, "task": found}
    return scores


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def matrix(run: Path) -> list[list[str]] | None:
    """Rows: the base model, then the model after each stage; columns: each stage's task metric, the
    multiple-choice accuracy on each benchmark, the KL to the stage before. None for a single run."""
    chain = earlier_runs(run)
    if len(chain) < 2:
        return None
    evals = [_read(r / "eval.json") for r in chain]
    metrics = [_metric(r) for r in chain]
    benches = sorted(evals[-1].get("retention", {}).get("benchmarks", {}))
    head = ["after"] + [f"{r.name}: {m}" for r, m in zip(chain, metrics, strict=True)]
    head += [f"{b} acc" for b in benches] + ["KL to the stage before / token"]

    def task(j: int, side: str):
        return (evals[j].get("task", {}).get(metrics[j]) or {}).get(side) if 0 <= j < len(chain) else None

    def bench(ev: dict, name: str, side: str):
        return ((ev.get("retention", {}).get("benchmarks", {}).get(name) or {}).get("acc") or {}).get(side)

    rows = [head, ["base model", _fmt(task(0, "base"))] + ["–"] * (len(chain) - 1)]
    rows[-1] += [_fmt(bench(evals[0], b, "base")) for b in benches] + ["–"]
    for i, ev in enumerate(evals):
        cells = []
        for j in range(len(chain)):
            if j < i:
                earlier = ev.get("earlier_tasks", {}).get(chain[j].name, {})
                cells.append(_fmt(earlier.get("task", {}).get(metrics[j])))
            else:  # j == i: this stage's own result; j == i + 1: the next stage's "before", measured on this model
                cells.append(_fmt(task(j, "finetuned" if j == i else "base") if j <= i + 1 else None))
        kl = (ev.get("retention", {}).get("prompts") or {}).get("kl_per_token")
        rows.append([chain[i].name, *cells, *[_fmt(bench(ev, b, "finetuned")) for b in benches], _fmt(kl)])
    return rows


PERCENT = ("chrf", "bleu")  # metrics on a 0-100 scale: read as 0-1 in backward transfer


def backward_transfer(run: Path) -> dict | None:
    """BWT of a chain ending at `run` (Lopez-Paz & Ranzato 2017): the mean change of each earlier task's score
    from just after it was learned to after the last stage, each score on a 0-1 scale (chrF and BLEU / 100),
    with the changes per task; and the final average over every task. None for a single run."""
    chain = earlier_runs(run)
    if len(chain) < 2:
        return None
    evals = [_read(r / "eval.json") for r in chain]
    metrics = [_metric(r) for r in chain]

    def unit(value: float | None, metric: str) -> float | None:
        return None if value is None else value / 100 if metric in PERCENT else value

    pairs = list(zip(evals, metrics, strict=True))
    learned = [unit((ev.get("task", {}).get(m) or {}).get("finetuned"), m) for ev, m in pairs]
    final = [unit(evals[-1].get("earlier_tasks", {}).get(r.name, {}).get("task", {}).get(m), m)
             for r, m in zip(chain[:-1], metrics[:-1], strict=True)] + [learned[-1]]  # fmt: skip
    changes = {r.name: f - a for r, f, a in zip(chain[:-1], final, learned, strict=False) if None not in (f, a)}
    scored = [f for f in final if f is not None]
    return {
        "bwt": sum(changes.values()) / len(changes) if changes else None,
        "changes": changes,
        "final_average": sum(scored) / len(scored) if scored else None,
    }


def _metric(run: Path) -> str:
    """The task metric a run's config.yaml names (the report's default when it names none)."""
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) if (run / "config.yaml").is_file() else {}
    return (cfg or {}).get("eval", {}).get("metric", "exact_match")
