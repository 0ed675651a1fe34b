"""The Registry page: MLflow versions of registered runs, register one, promote a version through gates.

The same work as `forgetless registry` (through api.py); MLflow is the optional extra forgetless[registry].
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import gradio as gr

from forgetless import api
from forgetless.config import pipeline as pipeline_config
from forgetless.errors import UserError
from forgetless.ui import runs
from forgetless.ui.chat import with_adapters


def _uri(text: str) -> str:
    """The tracking URI as given; a SQLite file's folder is made first (MLflow makes the file, not the folder)."""
    uri = text.strip()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


# one piece: Gradio binds each callback to the components made above it in the same block
def registry_page(root: Path) -> gr.Dropdown | None:
    """The Registry tab; returns its run chooser (refreshed when the tab is opened), None without MLflow."""
    if importlib.util.find_spec("mlflow") is None:
        gr.Markdown("The registry needs MLflow: `pip install 'forgetless[registry]'`, then restart `forgetless ui`.")
        return None
    # MLFLOW_TRACKING_URI, else the registry beside the runs (runs/registry, as the CLI's default)
    default = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'registry' / 'mlflow.db'}"
    uri = gr.Textbox(default, label="tracking URI", elem_id="registry-uri")
    head = ["name", "version", "aliases", "base model", "metrics"]
    versions = gr.Dataframe(headers=head, interactive=False, elem_id="registry-table", wrap=True)
    with gr.Row():
        run = gr.Dropdown(with_adapters(root), label="run to register", elem_id="registry-run")
        name = gr.Textbox(label="registered model name", elem_id="registry-name")
        register = gr.Button("Register")
    with gr.Row():
        version = gr.Number(label="version", precision=0, elem_id="registry-version")
        alias = gr.Textbox("production", label="alias")
        min_task = gr.Textbox(label="min task scores (METRIC=VALUE, comma-separated)", elem_id="registry-min-task")
        max_kl = gr.Textbox(label="max KL to base / token")
        budget_met = gr.Checkbox(label="forgetting budget met", elem_id="registry-budget-met")
        promote = gr.Button("Promote if it passes the gates")
    said = gr.Markdown(elem_id="registry-message")
    refresh = gr.Button("Refresh")

    def listed(u):
        try:
            rows = api.versions(None, _uri(u))
        except UserError as e:
            return gr.update(), f"forgetless: error: {e}"
        table = [
            [r["name"], r["version"], ", ".join(r["aliases"]), r["base_model"], _short(r["metrics"])] for r in rows
        ]
        return table, ""

    def do_register(u, run_name, model_name):
        try:
            r = api.register(runs.run_dir(root, run_name or ""), model_name.strip(), _uri(u))
        except UserError as e:
            return f"forgetless: error: {e}"
        return f"registered {r['name']} version {r['version']}"

    def do_promote(u, model_name, v, a, mins, kl, met):
        try:
            failed = api.promote(model_name.strip(), int(v or 0), a.strip(), _gates(mins, kl, met), _uri(u))
        except UserError as e:
            return f"forgetless: error: {e}"
        return f"refused: fails {'; '.join(failed)}" if failed else f"{model_name} v{int(v)} is now '{a}'"

    refresh.click(listed, uri, [versions, said])
    # after an action its message stays; the table follows
    register.click(do_register, [uri, run, name], said).then(lambda u: listed(u)[0], uri, versions)
    promote.click(do_promote, [uri, name, version, alias, min_task, max_kl, budget_met], said).then(
        lambda u: listed(u)[0], uri, versions
    )
    return run


def _short(metrics: dict) -> str:
    shown = sorted((k, v) for k, v in metrics.items() if k.startswith(("task.", "budget.")) or "kl" in k)
    return ", ".join(f"{k} {v:.4g}" for k, v in shown)


def _gates(min_task: str, max_kl: str, budget_met: bool = False) -> pipeline_config.Gates:
    try:
        kl = float(max_kl) if max_kl.strip() else None
    except ValueError:
        raise UserError(f"max KL '{max_kl}': give a number, e.g. 0.05") from None
    return pipeline_config.gates({}, [x for x in min_task.split(",") if x.strip()], kl, budget_met=budget_met)
