"""`forgetless ui`: a browser UI over the runs in one folder (Gradio; `pip install 'forgetless[ui]'`).

Pages: New run, Runs, Report and compare, Chat, Registry. Training runs in separate processes
(ui/runs.py), so the page stays responsive and a run survives a closed tab or a stopped UI.

On 127.0.0.1 (or localhost, ::1) no login is asked; binding any other host needs an API key, as
`forgetless serve` does: the browser then asks for it (any user name, the key as password).
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from forgetless.deploy.guard import LOOPBACK, LocalOnly
from forgetless.errors import UserError
from forgetless.ui import chat, monitor, new_run, registry_page

CSS = "#run-detail code{white-space:pre-wrap}"


def build(root: Path) -> gr.Blocks:
    root = Path(root).resolve()
    with gr.Blocks(title="forgetless", analytics_enabled=False, fill_width=True) as app:
        gr.Markdown(f"# forgetless\nruns in `{root}`")
        with gr.Tabs():
            with gr.Tab("New run", id="new"):
                new_run.page(root)
            with gr.Tab("Runs", id="runs"):
                monitor.runs_page(root)
            with gr.Tab("Report and compare", id="report") as report_tab:
                report_runs = monitor.report_page(root)
            with gr.Tab("Chat", id="chat") as chat_tab:
                chat_runs = chat.chat_page(root)
            with gr.Tab("Registry", id="registry") as registry_tab:
                registry_runs = registry_page.registry_page(root)
        # runs finish while the page is open: the choosers list them when their tab is opened
        report_tab.select(lambda: gr.update(choices=monitor.finished(root)), None, report_runs)
        chat_tab.select(lambda: chat.refresh_choices(root), None, chat_runs)
        if registry_runs is not None:
            registry_tab.select(lambda: chat.refresh_choices(root), None, registry_runs)
    return app


def check_access(host: str, api_key: str | None) -> str | None:
    """The key the browser must give, or None on loopback without one; another host without a key is refused."""
    key = api_key or os.environ.get("FORGETLESS_API_KEY")
    if not key and host not in LOOPBACK:
        raise UserError(f"host {host} exposes the UI beyond this machine: set --api-key or FORGETLESS_API_KEY")
    return key


def launch(root: str, host: str = "127.0.0.1", port: int = 7860, api_key: str | None = None) -> None:
    key = check_access(host, api_key)
    Path(root).mkdir(parents=True, exist_ok=True)
    auth = (lambda _user, password: hmac.compare_digest(password.encode(), key.encode())) if key else None
    print(f"[forgetless] UI for the runs in {Path(root).resolve()} on http://{host}:{port}", flush=True)
    build(Path(root)).launch(
        server_name=host,
        server_port=port,
        auth=auth,
        auth_message="user: any name; password: the UI's API key" if key else None,
        share=False,
        footer_links=[],
        css=CSS,
        quiet=True,
        app_kwargs=app_settings(key),
    )


def app_settings(key: str | None) -> dict:
    """Gradio's web app, without a key, refuses requests from web pages and rebound host names
    (deploy/guard.py): a page could otherwise start runs on local files and read their snippets back.
    Gradio's own CORS check only hides the answers from pages; the request still runs."""
    return {} if key else {"middleware": [Middleware(LocalOnly)]}
