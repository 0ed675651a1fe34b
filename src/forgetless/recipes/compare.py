"""`forgetless compare`: train one config under several forgetting presets and tabulate gain vs retention.

Every variant gets the same seed, data order for the task rows and step budget; only
`forgetting.preset` differs, and the variant `budget` (preset full with the config's forgetting.budget,
which the preset variants drop) holds the budget. Each variant is a normal run in OUTPUT_DIR/<variant>/; a variant
whose finished run already has the same resolved config is reused, so an interrupted
comparison continues where it stopped. The table goes to stdout, compare.md and compare.json.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import yaml

from forgetless import files
from forgetless.config import loader
from forgetless.config.schema import Config, kl_tokens_of, rehearsal_ce_weight
from forgetless.errors import UserError
from forgetless.eval import report

PRESETS = ("none", "lwf", "rehearsal", "full")
NO_BUDGET = ["forgetting.budget.kl=null", "forgetting.budget.mc_drop=null"]
MET = {True: "yes", False: "no"}  # the table's budget column; – for a run without a budget


def preset_variants(names: list[str], budget: bool = False) -> dict[str, list[str]]:
    """The CLI's variants: one per forgetting preset, named after it, and `budget` (preset full under the
    config's forgetting.budget, given: `budget`); the preset variants train without the budget."""
    for v in names:
        if v not in (*PRESETS, "budget"):
            raise UserError(f"unknown variant '{v}'; choose from {', '.join(PRESETS)}, budget")
    if not names:
        raise UserError("--variants is empty; for example --variants none,full")
    if "budget" in names and not budget:
        raise UserError("variant budget needs a budget in the config: forgetting.budget.kl=X (or mc_drop=Y)")
    return {v: ["forgetting.preset=full"] if v == "budget" else [f"forgetting.preset={v}", *NO_BUDGET] for v in names}


def variant_config(cfg: Config, label: str, overrides: list[str]) -> Config:
    tree = cfg.model_dump(mode="json")
    return loader.validate(tree, [*overrides, f"output_dir={Path(cfg.output_dir) / label}"])


def effective(tree: dict) -> dict:
    """What determines a run's result: the config without output_dir and without the forgetting
    settings its preset does not use (changing, say, the rehearsal weight does not change a `none`
    run), with the automatic rehearsal CE weight resolved."""
    f = dict(tree["forgetting"])
    reh, lwf = dict(f["rehearsal"]), f["lwf"]
    lwf = {**lwf, "tokens": kl_tokens_of(lwf["tokens"], f["budget"]["kl"])}  # unset: the automatic choice, named
    reh["weight"] = rehearsal_ce_weight(f["preset"], reh.get("weight"), lwf["weight"], lwf["tokens"])
    f["lwf"] = lwf
    f["rehearsal"] = reh
    if f["preset"] not in ("lwf", "full") or f["lwf"]["weight"] == 0:
        f.pop("lwf")
    if f["preset"] not in ("rehearsal", "full") and f["ewc"]["weight"] == 0:
        f.pop("rehearsal")
    # Where a run lives does not change it: a moved run directory stays reusable.
    return {**{k: v for k, v in tree.items() if k != "output_dir"}, "forgetting": f}


def same_run(out: Path, cfg: Config) -> bool:
    """Whether the run in `out` was trained with (the effective settings of) `cfg`."""
    saved = out / "config.yaml"
    if not saved.is_file():
        return False
    try:  # validating fills settings added since the run with their defaults
        before = loader.validate(yaml.safe_load(saved.read_text(encoding="utf-8"))).model_dump(mode="json")
    except UserError:  # written by a version whose settings no longer exist
        return False
    return effective(before) == effective(cfg.model_dump(mode="json"))


def _finished(vcfg: Config) -> dict | None:
    out = Path(vcfg.output_dir)
    if (out / "summary.json").is_file() and same_run(out, vcfg):
        return json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return None


def run(cfg: Config, variants: dict[str, list[str]], train: Callable[..., dict], overwrite: bool = False) -> list[dict]:
    """Train (or reuse) each variant = label -> overrides on top of `cfg` with `train` (the config's
    recipe, from api.RECIPES: a recipe never imports another); returns the table rows."""
    rows = []
    for v, overrides in variants.items():
        vcfg = variant_config(cfg, v, overrides)
        summary = _finished(vcfg)
        if summary is None:
            print(f"\n[forgetless] compare: training variant '{v}' -> {vcfg.output_dir}")
            summary = train(vcfg, overwrite=overwrite)
        else:
            print(f"[forgetless] compare: reusing the finished run of '{v}' in {vcfg.output_dir}")
        rows.append(row(v, summary, cfg.eval.metric))
    reference = next((r for r in rows if r["variant"] == "none"), None)
    for r in rows:
        gain = reference["gain"] if reference else None
        r["share_of_none_gain"] = r["gain"] / gain if gain and r["gain"] is not None else None
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files.write_json(out / "compare.json", rows)
    files.write_text(out / "compare.md", table(rows, cfg.eval.metric) + "\n")
    if cfg.eval.report:
        report.write([Path(cfg.output_dir) / v for v in variants], out)
    return rows


def row(variant: str, s: dict, metric: str) -> dict:
    before, after, ret = s.get("task_before") or {}, s.get("task_after") or {}, s.get("retention") or {}
    b, a = before.get(metric), after.get(metric)
    return {
        "variant": variant,
        "run": s.get("output_dir"),
        "before": b,
        "after": a,
        "gain": a - b if a is not None and b is not None else None,
        "kl_per_token": ret.get("kl_per_token"),
        "agreement": ret.get("agreement"),
        "retention_prompts": ret.get("n"),
        "train_seconds": s.get("train_seconds"),
        "budget_met": (s.get("budget") or {}).get("met"),
    }


def _fmt(x, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def table(rows: list[dict], metric: str) -> str:
    """Markdown table: task score and gain, share of the plain-LoRA gain kept, retention, whether a budget
    was met (– for the variants without one)."""
    lines = [
        f"| variant | {metric} before → after | gain | share of `none` gain | KL to base / token "
        "| unchanged greedy answers | budget met | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = _fmt(r.get("share_of_none_gain") and 100 * r["share_of_none_gain"], ".0f")
        lines.append(
            f"| {r['variant']} | {_fmt(r['before'], '.3f')} → {_fmt(r['after'], '.3f')} | {_fmt(r['gain'], '+.3f')} "
            f"| {share}{'%' if share != '–' else ''} | {_fmt(r['kl_per_token'], '.4f')} "
            f"| {_fmt(r['agreement'] and 100 * r['agreement'], '.0f')}{'%' if r['agreement'] is not None else ''} "
            f"| {MET.get(r.get('budget_met'), '–')} "
            f"| {_fmt(r['train_seconds'], '.0f')} |"
        )
    return "\n".join(lines)
