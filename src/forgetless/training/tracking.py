"""Run tracking on MLflow: a finished run's config as params, metrics.jsonl as step metrics, its eval
numbers, lineage tags (base model, data hashes, config, code) and its adapter and report as artifacts.

`train.mlflow_tracking_uri` logs every run here when it ends; the registry (deploy/registry.py) versions
and promotes what was logged. The default store is a local SQLite database (`runs/registry/mlflow.db`,
artifacts beside it); any MLflow tracking URI works (`--tracking-uri` or MLFLOW_TRACKING_URI). MLflow is
an optional extra: `pip install 'forgetless[registry]'`. (TensorBoard curves are written during the run
by metrics_log.py.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from importlib.metadata import version
from pathlib import Path

import yaml

from forgetless import files
from forgetless.config import loader
from forgetless.data.formats import resolve_path
from forgetless.errors import UserError
from forgetless.training.rundir import EXPORTED

DEFAULT_DIR = Path("runs/registry")
EXPERIMENT = "forgetless"


def tracking_uri(uri: str | None = None) -> str:
    if uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return uri or os.environ["MLFLOW_TRACKING_URI"]
    DEFAULT_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(DEFAULT_DIR / 'mlflow.db').resolve()}"


def client(uri: str | None):
    try:
        from mlflow.tracking import MlflowClient  # optional extra forgetless[registry] (~850 MB)
    except ImportError:
        raise UserError(
            "the registry needs MLflow: pip install 'forgetless[registry]' (or pip install mlflow)"
        ) from None

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=tracking_uri(uri))


def _experiment(store, uri: str | None) -> str:
    found = store.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        return found.experiment_id
    # A SQLite store keeps its artifacts in a folder beside the database (MLflow would use ./mlruns).
    where = tracking_uri(uri)
    location = None
    if where.startswith("sqlite:///"):
        location = (Path(where.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return store.create_experiment(EXPERIMENT, artifact_location=location)


def _code_version() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"forgetless {version('forgetless')}" + (f" ({commit})" if commit else "")


def lineage(run: Path) -> dict[str, str]:
    """Tags that say where a version came from: base model, data hashes, config, code."""

    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    tags = {
        "base_model": str(cfg["model"]["name"]),
        "quantization": str(cfg["model"]["quantization"]),
        "peft_method": str(cfg["peft"]["method"]),
        "forgetting_preset": str(cfg["forgetting"]["preset"]),
        "config_sha256": hashlib.sha256((run / "config.yaml").read_bytes()).hexdigest(),
        "code_version": _code_version(),
        "run_dir": str(run.resolve()),
    }
    for kind in ("train", "validation"):
        for i, ref in enumerate(cfg["data"][kind]):
            path = resolve_path(ref)
            tags[f"data.{kind}.{i}"] = f"{ref} sha256:{files.sha256(Path(path))}" if Path(path).is_file() else ref
    exported = run / EXPORTED / "forgetless_export.json"  # the pipeline's export stage, or `forgetless export`
    if exported.is_file():
        record = json.loads(exported.read_text(encoding="utf-8"))
        for key in ("format", "file", "quant", "bytes", "sha256"):
            if key in record:
                tags[f"export.{key}"] = str(record[key])
        tags["export.path"] = str((run / EXPORTED / record["file"]).resolve())
    return tags


def metrics(run: Path) -> dict[str, float]:
    """The numbers gates look at, flattened from eval.json (task scores, retention) and summary.json (whether
    the forgetting budget was met: budget.met 1 or 0)."""
    ev = json.loads((run / "eval.json").read_text(encoding="utf-8"))
    out: dict[str, float] = {}
    for name, value in (ev.get("task") or {}).items():
        if isinstance(value, dict) and isinstance(value.get("finetuned"), (int, float)):
            out[f"task.{name}"] = float(value["finetuned"])
    ret = ev.get("retention") or {}
    prompts = ret.get("prompts") or {}
    for key in ("kl_per_token", "agreement"):
        if isinstance(prompts.get(key), (int, float)):
            out[f"retention.{key}"] = float(prompts[key])
    for bench, scores in (ret.get("benchmarks") or {}).items():
        acc = scores.get("acc") or {}
        if "diff" in acc:
            out[f"retention.{bench}.acc"] = float(acc["finetuned"])
            out[f"retention.{bench}.acc_diff"] = float(acc["diff"])
    summary = run / "summary.json"
    verdict = json.loads(summary.read_text(encoding="utf-8")).get("budget") if summary.is_file() else None
    if verdict:
        out["budget.met"] = float(verdict["met"])
    return out


def log_run(run: Path, uri: str | None = None, tags: dict[str, str] | None = None) -> str:
    """An MLflow run with the run's config as params, metrics.jsonl as step metrics, eval numbers,
    lineage tags and the adapter/report as artifacts; returns the MLflow run id."""
    from mlflow.entities import Metric, Param  # optional extra, as above

    store = client(uri)
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    mlrun = store.create_run(_experiment(store, uri), tags=tags or lineage(run), run_name=run.name)
    rid = mlrun.info.run_id
    params = [Param(k, str(v)[:500]) for k, v in loader.flat(cfg).items()]
    now = int(1000 * os.path.getmtime(run / "config.yaml"))
    series = []
    if (run / "metrics.jsonl").is_file():
        for row in files.read_jsonl_records(run / "metrics.jsonl"):
            series += [
                Metric(k, float(v), now, int(row["step"]))
                for k, v in row.items()
                if k != "step" and isinstance(v, (int, float))
            ]
    final = [Metric(k, v, now, 0) for k, v in metrics(run).items()] if (run / "eval.json").is_file() else []
    for i in range(0, max(len(params), 1), 100):
        store.log_batch(rid, params=params[i : i + 100])
    for i in range(0, len(series + final), 1000):
        store.log_batch(rid, metrics=(series + final)[i : i + 1000])
    for name in ("adapter", "merged"):
        if (run / name).is_dir():
            store.log_artifacts(rid, str(run / name), name)
    for name in ("eval.json", "summary.json", "config.yaml", "report.md", "report.html"):
        if (run / name).is_file():
            store.log_artifact(rid, str(run / name))
    store.set_terminated(rid)
    return rid
