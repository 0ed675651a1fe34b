"""The Chat page (one prompt to the base model and to one or more runs' adapters, answers side by side)
and the Registry page (MLflow versions, gates, promote).

Chat uses `forgetless chat`'s session (deploy/chat.py): one model in memory with the chosen adapters,
the base answering with the adapters switched off. It is loaded when a prompt first needs it and kept
until the choice of adapters changes.
"""

from __future__ import annotations

import html
import importlib.util
import os
import threading
from pathlib import Path

import gradio as gr

from forgetless.adapters.saved import adapter_dir, base_of
from forgetless.config import pipeline as pipeline_config
from forgetless.deploy import registry
from forgetless.deploy.chat import BASE, Chat
from forgetless.errors import UserError
from forgetless.ui import runs


class ChatSessions:
    """The chat model for the current choice of adapters; one generation at a time (one model, one CPU)."""

    def __init__(self, root: Path):
        self.root, self.key, self.chat = root, None, None
        self.lock = threading.Lock()

    def answers(self, names: list[str], prompt: str, system: str, max_new_tokens: int) -> list[tuple[str, str]]:
        if not prompt.strip():
            raise UserError("write a prompt first")
        with self.lock:
            if tuple(names) != self.key:  # the model is reloaded for other adapters only
                self.chat, self.key = None, None  # the old model goes before the new one loads
                self.chat, self.key = self._load(names), tuple(names)
            self.chat.system, self.chat.max_new_tokens = system or None, int(max_new_tokens)
            out = []
            for name in self.chat.names:
                self.chat.use(name)
                out.append((name, self.chat.answer(prompt)))
            return out

    def _load(self, names: list[str]) -> Chat:
        dirs = {n: adapter_dir(str(runs.run_dir(self.root, n))) for n in names}
        bases = {base_of(d) for d in dirs.values()}
        if len(bases) > 1:
            raise UserError(f"the chosen runs have different base models ({', '.join(sorted(map(str, bases)))})")
        return Chat(None, [f"{n}={d}" for n, d in dirs.items()], None, 128)  # answers() sets both per prompt


def side_by_side(answers: list[tuple[str, str]]) -> str:
    cards = "".join(
        f"<div class='fl-answer' data-model='{html.escape(name)}' style='flex:1;min-width:220px;border:1px solid #ccc;"
        f"border-radius:6px;padding:8px'><h4>{'base model' if name == BASE else html.escape(name)}</h4>"
        f"<pre style='white-space:pre-wrap'>{html.escape(text)}</pre></div>"
        for name, text in answers
    )
    return f"<div id='fl-answers' style='display:flex;gap:8px;flex-wrap:wrap'>{cards}</div>"


def chat_page(root: Path) -> gr.Dropdown:
    """The Chat tab; returns its adapter chooser (refreshed when the tab is opened)."""
    sessions = ChatSessions(root)
    with gr.Row():
        picked = gr.Dropdown(_with_adapters(root), multiselect=True, label="adapters (runs)", elem_id="chat-runs")
        tokens = gr.Slider(8, 1024, value=128, step=8, label="max new tokens")
    system = gr.Textbox(label="system prompt (optional)")
    prompt = gr.Textbox(label="prompt: a general question shows what was kept, a task input what was learned", lines=3)
    prompt.elem_id = "chat-prompt"
    send = gr.Button("Send to base and adapters", variant="primary", elem_id="chat-send")
    shown = gr.HTML(elem_id="chat-answers")

    def ask(names, text, sys_prompt, n):
        try:
            return side_by_side(sessions.answers(names or [], text, sys_prompt, n))
        except UserError as e:
            return f"<p>forgetless: error: {html.escape(str(e))}</p>"

    send.click(ask, [picked, prompt, system, tokens], shown)
    return picked


def _with_adapters(root: Path) -> list[str]:
    return [r.name for r in runs.scan(root) if r.status == "finished" and (r.dir / "adapter").is_dir()]


def refresh_choices(root: Path):
    """For the Chat and Report tabs when opened: the runs finished since the page loaded."""
    return gr.update(choices=_with_adapters(root))


def _uri(text: str) -> str:
    """The tracking URI as given; a SQLite file's folder is made first (MLflow makes the file, not the folder)."""
    uri = text.strip()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


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
        run = gr.Dropdown(_with_adapters(root), label="run to register", elem_id="registry-run")
        name = gr.Textbox(label="registered model name", elem_id="registry-name")
        register = gr.Button("Register")
    with gr.Row():
        version = gr.Number(label="version", precision=0, elem_id="registry-version")
        alias = gr.Textbox("production", label="alias")
        min_task = gr.Textbox(label="min task scores (METRIC=VALUE, comma-separated)", elem_id="registry-min-task")
        max_kl = gr.Textbox(label="max KL to base / token")
        promote = gr.Button("Promote if it passes the gates")
    said = gr.Markdown(elem_id="registry-message")
    refresh = gr.Button("Refresh")

    def listed(u):
        try:
            rows = registry.versions(None, _uri(u))
        except UserError as e:
            return gr.update(), f"forgetless: error: {e}"
        table = [
            [r["name"], r["version"], ", ".join(r["aliases"]), r["base_model"], _short(r["metrics"])] for r in rows
        ]
        return table, ""

    def do_register(u, run_name, model_name):
        try:
            r = registry.register(runs.run_dir(root, run_name or ""), model_name.strip(), _uri(u))
        except UserError as e:
            return f"forgetless: error: {e}"
        return f"registered {r['name']} version {r['version']}"

    def do_promote(u, model_name, v, a, mins, kl):
        try:
            failed = registry.promote(model_name.strip(), int(v or 0), a.strip(), _gates(mins, kl), _uri(u))
        except UserError as e:
            return f"forgetless: error: {e}"
        return f"refused: fails {'; '.join(failed)}" if failed else f"{model_name} v{int(v)} is now '{a}'"

    refresh.click(listed, uri, [versions, said])
    # after an action its message stays; the table follows
    register.click(do_register, [uri, run, name], said).then(lambda u: listed(u)[0], uri, versions)
    promote.click(do_promote, [uri, name, version, alias, min_task, max_kl], said).then(
        lambda u: listed(u)[0], uri, versions
    )
    return run


def _short(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()) if k.startswith("task.") or "kl" in k)


def _gates(min_task: str, max_kl: str) -> pipeline_config.Gates:
    try:
        kl = float(max_kl) if max_kl.strip() else None
    except ValueError:
        raise UserError(f"max KL '{max_kl}': give a number, e.g. 0.05") from None
    return pipeline_config.gates({}, [x for x in min_task.split(",") if x.strip()], kl)
