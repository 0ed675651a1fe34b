"""`forgetless pipeline pipeline.yaml`: data check -> train -> evaluate -> export -> register -> promote -> serve.

Each stage's outcome goes to `OUTPUT_DIR/pipeline.json` as it ends. A rerun skips the stages
that finished, resumes training from its last checkpoint when training was cut off, and starts
again at the stage that failed (after the user fixed, say, the registry URI). A promotion
refused by the gates is recorded as refused and retried on the next run.

    train: configs/quickstart.yaml        # a training config (required)
    overrides: [train.max_steps=30]       # key=value overrides on top of it
    output_dir: runs/pipeline             # overrides the config's output_dir
    registry: {name: support-triage, tracking_uri: null}
    gates: {min_task: {exact_match: 0.6}, max_kl: 0.1, max_benchmark_drop: 0.05}
    alias: production
    serve: {enabled: false, port: 8000, adapters: {}}
    data_check: {against: [], near: 0.85, strict: false}   # `forgetless data check` in the data stage
    data_prep: {dedup: false, decontaminate: false, augment: null}   # before the check; see DataPrep
    export: {format: gguf, quant: q8_0}   # optional: `forgetless export` to OUTPUT_DIR/export, recorded by register

With data_prep steps the data stage writes the prepared training files to OUTPUT_DIR/data/ (each
step's removal log or counts beside them) and the run trains on those.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from forgetless import api, files
from forgetless.config.pipeline import STAGES, PipelineConfig, load
from forgetless.data import augment, check
from forgetless.data.build import build
from forgetless.data.formats import resolve_path
from forgetless.deploy import export, serve
from forgetless.deploy.registry import metrics, promote, register
from forgetless.errors import UserError
from forgetless.model import loader as models
from forgetless.recipes import evaluate
from forgetless.recipes.compare import same_run
from forgetless.reference import paraphrase
from forgetless.training import checkpoint
from forgetless.training.rundir import DATA_CHECK, EXPORTED, PIPELINE_STATE, PREPARED_DATA


class Record:
    """pipeline.json: one entry per stage with status, result, error and seconds."""

    def __init__(self, out: Path):
        self.path = out / PIPELINE_STATE
        self.stages = json.loads(self.path.read_text(encoding="utf-8"))["stages"] if self.path.exists() else {}

    def done(self, stage: str) -> bool:
        return self.stages.get(stage, {}).get("status") == "done"

    def write(self, stage: str, status: str, result=None, error: str | None = None, seconds: float = 0.0) -> None:
        self.stages[stage] = {"status": status, "result": result, "error": error, "seconds": round(seconds, 1)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        files.write_json(self.path, {"stages": self.stages})


def run(path: Path, serve_now: bool = True) -> dict:
    pcfg = load(path)
    cfg = api.load_config(
        pcfg.train, [*pcfg.overrides, *([f"output_dir={pcfg.output_dir}"] if pcfg.output_dir else [])]
    )
    out = Path(cfg.output_dir)
    record = Record(out)
    source = cfg
    if pcfg.data_prep.any():  # every later stage trains and evaluates on the prepared files
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"train": _prepared(cfg, out)})})
    stages = {
        "data": lambda: _data(source, pcfg, out),
        "train": lambda: _train(cfg, out),
        "evaluate": lambda: _evaluate(cfg, out),
        "export": lambda: _export(pcfg, out) if pcfg.export else "not configured",
        "register": lambda: _register(pcfg, out),
        "promote": lambda: _promote(pcfg, record),
        "serve": lambda: _serve(pcfg, out) if pcfg.serve.enabled and serve_now else "not enabled",
    }
    for stage in STAGES:
        if record.done(stage):
            print(f"[pipeline] {stage}: done in an earlier run, skipped")
            continue
        print(f"[pipeline] {stage} ...", flush=True)
        t0 = time.time()
        try:
            result = stages[stage]()
        except Refused as e:
            record.write(stage, "refused", error=str(e), seconds=time.time() - t0)
            raise UserError(f"pipeline stopped at {stage}: {e}; rerun after changing the run or the gates") from None
        except Exception as e:  # recorded, then one line for the user
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            record.write(stage, "failed", error=why, seconds=time.time() - t0)
            raise UserError(
                f"pipeline failed at {stage}: {why}; fix it and rerun: finished stages are skipped"
            ) from e  # --debug shows the cause
        record.write(stage, "done", result, seconds=time.time() - t0)
        print(f"[pipeline] {stage}: done ({json.dumps(result)[:200]})")
    return record.stages


class Refused(Exception):
    pass


def _prepared(cfg, out: Path) -> list[str]:
    return [str(out / PREPARED_DATA / f"{i}-{Path(ref).stem}.jsonl") for i, ref in enumerate(cfg.data.train)]


def _prepare(cfg, pcfg: PipelineConfig, out: Path) -> tuple[list[str], dict]:
    """dedup -> decontaminate -> augment on each training file; returns the files and what each step did."""
    prep, near = pcfg.data_prep, pcfg.data_check.near
    held_out = [*cfg.data.validation, *pcfg.data_check.against]
    prepared, steps = [], {}
    for ref, target in zip(cfg.data.train, _prepared(cfg, out), strict=True):
        current, target = ref, Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        if prep.dedup:
            steps[f"{ref}: dedup"] = dict(zip(("kept", "removed"), check.dedup(current, target, near), strict=True))
            current = str(target)
        if prep.decontaminate and held_out:
            kept_removed = check.decontaminate(current, held_out, target, near)
            steps[f"{ref}: decontaminate"] = dict(zip(("kept", "removed"), kept_removed, strict=True))
            current = str(target)
        if prep.augment is not None:
            a = prep.augment
            settings = augment.Settings(a.method, a.n, a.model or cfg.model.name, a.seed, a.answers)
            stats = paraphrase.augment_file(current, target.with_suffix(".tmp.jsonl"), settings)
            target.with_suffix(".tmp.jsonl").replace(target)
            target.with_suffix(".tmp.augment.json").replace(target.with_suffix(".augment.json"))
            steps[f"{ref}: augment"] = {k: stats[k] for k in ("rows", "written", "rejected")}
            current = str(target)
        if current == ref:  # no step touched this file (decontaminate without held-out files)
            shutil.copy(resolve_path(ref), target)
        prepared.append(str(target))
    return prepared, steps


def _data(cfg, pcfg: PipelineConfig, out: Path) -> dict:
    """The optional preparation steps, then the training data as training will read it and
    `forgetless data check` on it (report in OUTPUT_DIR/data_check.json); with data_check.strict a
    warning stops the pipeline here."""
    stage = pcfg.data_check
    steps = {}
    if pcfg.data_prep.any():
        prepared, steps = _prepare(cfg, pcfg, out)
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"train": prepared})})
    tokenizer = models.load_tokenizer(models.resolve(cfg.model.name))
    data = build(cfg.data, tokenizer, cfg.train.seed)
    report = check.check(
        cfg.data.train, [*cfg.data.validation, *stage.against], stage.near, tokenizer, cfg.data.max_length
    )
    out.mkdir(parents=True, exist_ok=True)
    files.write_json(out / DATA_CHECK, report)
    for warning in report["warnings"]:
        print(f"[forgetless] data check: {warning}")
    if stage.strict and report["warnings"]:
        raise UserError(f"data check (strict): {report['warnings'][0]}; see {out / DATA_CHECK}")
    facts = {"train_rows": len(data.train), "validation_rows": len(data.validation), "notes": data.notes()}
    return facts | {"check_warnings": report["warnings"]} | ({"prepared": steps} if steps else {})


def _train(cfg, out: Path) -> dict:
    if (out / "summary.json").is_file() and (out / "adapter").is_dir():
        if not same_run(out, cfg):
            raise UserError(f"{out} holds a finished run with a different config; choose another output_dir")
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    else:
        resume = checkpoint.latest(out) is not None  # a run cut off earlier continues where it stopped
        summary = api.run_recipe(cfg, resume=resume)
    return {k: summary.get(k) for k in ("steps", "train_seconds", "tokens_per_s", "effective_batch")}


def _evaluate(cfg, out: Path) -> dict:
    if not (out / "eval.json").is_file():  # training ran with its own evaluation off
        evaluate.run(cfg, str(out / "adapter"), None, out / "eval")
        shutil.copy(out / "eval" / "eval.json", out / "eval.json")

    return metrics(out)


def _export(pcfg: PipelineConfig, out: Path) -> dict:
    """The run exported to OUTPUT_DIR/export (a failed attempt's partial files are cleared first)."""
    target = out / EXPORTED
    shutil.rmtree(target, ignore_errors=True)
    record = export.run(str(out), pcfg.export.format, target, pcfg.export.quant)
    return {k: record[k] for k in ("format", "file", "bytes", "sha256") if k in record}


def _register(pcfg: PipelineConfig, out: Path) -> dict:
    return register(out, pcfg.registry.name, pcfg.registry.tracking_uri)


def _promote(pcfg: PipelineConfig, record: Record) -> dict:
    version = record.stages["register"]["result"]["version"]
    failed = promote(pcfg.registry.name, version, pcfg.alias, pcfg.gates, pcfg.registry.tracking_uri)
    if failed:
        raise Refused(f"version {version} fails the gates: {'; '.join(failed)}")
    return {"name": pcfg.registry.name, "version": version, "alias": pcfg.alias}


def _serve(pcfg: PipelineConfig, out: Path) -> str:
    serve.run(None, {pcfg.registry.name: str(out), **pcfg.serve.adapters}, pcfg.serve.host, pcfg.serve.port)
    return "stopped"
