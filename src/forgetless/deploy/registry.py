"""Model registry on MLflow: register a run's adapter (or merged model) with its lineage and
metrics, list and show versions, and promote a version to an alias only when it passes gates.

The default store is a local SQLite database (`runs/registry/mlflow.db`, artifacts beside it);
any MLflow tracking URI works (`--tracking-uri` or MLFLOW_TRACKING_URI). MLflow is an optional
extra: `pip install 'forgetless[registry]'`.
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
from pydantic import BaseModel, ConfigDict, Field

from forgetless import files
from forgetless.config import loader
from forgetless.data.formats import resolve_path
from forgetless.errors import UserError
from forgetless.training.rundir import EXPORTED

DEFAULT_DIR = Path("runs/registry")
EXPERIMENT = "forgetless"


class Gates(BaseModel):
    """What a version must show before it may take an alias (e.g. production)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min_task: dict[str, float] = Field(
        default_factory=dict, description="Lowest acceptable fine-tuned task scores, e.g. {exact_match: 0.6}."
    )
    max_kl: float | None = Field(None, ge=0, description="Highest acceptable KL to the base per token.")
    max_benchmark_drop: float | None = Field(
        None, ge=0, description="Largest acceptable drop of any retention benchmark's accuracy (base − fine-tuned)."
    )


def gates(tree: dict, min_task: list[str] = (), max_kl: float | None = None, max_drop: float | None = None) -> Gates:
    """Gates from a YAML tree (--gates FILE) with `METRIC=VALUE` minimums and limits on top (CLI and UI)."""
    tree = dict(tree)
    for item in min_task:
        name, _, value = item.partition("=")
        try:
            tree.setdefault("min_task", {})[name.strip()] = float(value)  # no '=': float('') fails too
        except ValueError:
            raise UserError(f"--min-task {item}: write METRIC=VALUE, e.g. exact_match=0.6") from None
    if max_kl is not None:
        tree["max_kl"] = max_kl
    if max_drop is not None:
        tree["max_benchmark_drop"] = max_drop
    try:
        return Gates(**tree)
    except Exception as e:  # pydantic's message names the key
        raise UserError(f"gates: {str(e).splitlines()[0]} ({' '.join(str(e).split())[:200]})") from None


def tracking_uri(uri: str | None = None) -> str:
    if uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return uri or os.environ["MLFLOW_TRACKING_URI"]
    DEFAULT_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(DEFAULT_DIR / 'mlflow.db').resolve()}"


def _client(uri: str | None):
    try:
        from mlflow.tracking import MlflowClient  # optional extra forgetless[registry] (~850 MB)
    except ImportError:
        raise UserError(
            "the registry needs MLflow: pip install 'forgetless[registry]' (or pip install mlflow)"
        ) from None

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=tracking_uri(uri))


def _experiment(client, uri: str | None) -> str:
    found = client.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        return found.experiment_id
    # A SQLite store keeps its artifacts in a folder beside the database (MLflow would use ./mlruns).
    store = tracking_uri(uri)
    location = None
    if store.startswith("sqlite:///"):
        location = (Path(store.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return client.create_experiment(EXPERIMENT, artifact_location=location)


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
    """The numbers gates look at, flattened from eval.json (task scores, retention)."""
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
    return out


def check_gates(values: dict[str, float], gates: Gates) -> list[str]:
    """The failed gates, each as one line (empty when the version passes)."""
    failed = []
    for name, floor in gates.min_task.items():
        got = values.get(f"task.{name}")
        if got is None or got < floor:
            failed.append(f"task {name} {got if got is not None else 'missing'} < {floor}")
    if gates.max_kl is not None:
        kl = values.get("retention.kl_per_token")
        if kl is None or kl > gates.max_kl:  # not measured (over no prompt, or retention off) never passes
            failed.append(f"KL to base {kl if kl is not None else 'not measured'} > {gates.max_kl}")
    if gates.max_benchmark_drop is not None:
        for key, diff in values.items():
            if key.endswith(".acc_diff") and -diff > gates.max_benchmark_drop:
                failed.append(f"{key.removesuffix('.acc_diff')} dropped {-diff:.3f} > {gates.max_benchmark_drop}")
    return failed


def log_run(run: Path, uri: str | None = None, tags: dict[str, str] | None = None) -> str:
    """An MLflow run with the run's config as params, metrics.jsonl as step metrics, eval numbers,
    lineage tags and the adapter/report as artifacts; returns the MLflow run id."""
    from mlflow.entities import Metric, Param  # optional extra, as above

    client = _client(uri)
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    mlrun = client.create_run(_experiment(client, uri), tags=tags or lineage(run), run_name=run.name)
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
        client.log_batch(rid, params=params[i : i + 100])
    for i in range(0, len(series + final), 1000):
        client.log_batch(rid, metrics=(series + final)[i : i + 1000])
    for name in ("adapter", "merged"):
        if (run / name).is_dir():
            client.log_artifacts(rid, str(run / name), name)
    for name in ("eval.json", "summary.json", "config.yaml", "report.md", "report.html"):
        if (run / name).is_file():
            client.log_artifact(rid, str(run / name))
    client.set_terminated(rid)
    return rid


def register(run: Path, name: str, uri: str | None = None) -> dict:
    run = Path(run)
    for needed in ("config.yaml", "eval.json"):
        if not (run / needed).is_file():
            raise UserError(f"{run} has no {needed}: register a finished forgetless run directory")
    if not (run / "adapter").is_dir() and not (run / "merged").is_dir():
        raise UserError(f"{run} has neither adapter/ nor merged/ to register")
    client = _client(uri)
    tags = lineage(run)  # hashes every data file: once
    rid = log_run(run, uri, tags)
    from mlflow.exceptions import MlflowException  # optional extra, as above

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="forgetless fine-tuned adapters")
    what = "merged" if (run / "merged").is_dir() else "adapter"
    source = f"{client.get_run(rid).info.artifact_uri}/{what}"
    version = client.create_model_version(name, source, rid, tags=tags)
    for key, value in metrics(run).items():
        client.set_model_version_tag(name, version.version, f"metric.{key}", str(value))
    return {"name": name, "version": int(version.version), "run_id": rid, "source": source}


def versions(name: str | None = None, uri: str | None = None) -> list[dict]:
    client = _client(uri)
    names = [name] if name else [m.name for m in client.search_registered_models()]
    out = []
    for n in names:
        aliases: dict[str, list[str]] = {}
        for alias, v in (client.get_registered_model(n).aliases or {}).items():
            aliases.setdefault(str(v), []).append(alias)
        for v in client.search_model_versions(f"name='{n}'"):
            out.append(
                {
                    "name": n,
                    "version": int(v.version),
                    "aliases": aliases.get(str(v.version), []),
                    "base_model": v.tags.get("base_model"),
                    "source": v.source,
                    "metrics": {
                        k.removeprefix("metric."): float(x) for k, x in v.tags.items() if k.startswith("metric.")
                    },
                    "tags": {k: x for k, x in v.tags.items() if not k.startswith("metric.")},
                }
            )
    return sorted(out, key=lambda r: (r["name"], r["version"]))


def promote(name: str, version: int, alias: str, gates: Gates, uri: str | None = None) -> list[str]:
    """Point `alias` at the version if it passes the gates; returns the failed gates otherwise."""
    found = [v for v in versions(name, uri) if v["version"] == int(version)]
    if not found:
        raise UserError(f"registry: {name} has no version {version}")
    failed = check_gates(found[0]["metrics"], gates)
    if not failed:
        _client(uri).set_registered_model_alias(name, alias, str(version))
    return failed
