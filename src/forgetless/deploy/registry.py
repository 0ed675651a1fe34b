"""Model registry on MLflow: register a run's adapter (or merged model) with its lineage and
metrics, list and show versions, and promote a version to an alias only when it passes gates.

The store and the logging of a run are training/tracking.py's (default: a local SQLite database in
runs/registry). MLflow is an optional extra: `pip install 'forgetless[registry]'`.
"""

from __future__ import annotations

from pathlib import Path

from forgetless.config.pipeline import Gates
from forgetless.errors import UserError
from forgetless.training.tracking import client as _client
from forgetless.training.tracking import lineage, log_run, metrics


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
    if gates.budget_met and values.get("budget.met") != 1.0:
        said = {None: "was trained without forgetting.budget", 0.0: "did not meet its forgetting budget"}
        failed.append(f"budget_met: the run {said.get(values.get('budget.met'), 'has no budget verdict')}")
    return failed


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
