"""The Chat page: one prompt to the base model and to one or more runs' adapters, answers side by side.

Chat uses `forgetless chat`'s session (deploy/chat.py): one model in memory with the chosen adapters,
the base answering with the adapters switched off. It is loaded when a prompt first needs it and kept
until the choice of adapters changes.
"""

from __future__ import annotations

import html
import threading
from pathlib import Path

import gradio as gr

from forgetless.adapters.saved import adapter_dir, base_of
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
        picked = gr.Dropdown(with_adapters(root), multiselect=True, label="adapters (runs)", elem_id="chat-runs")
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


def with_adapters(root: Path) -> list[str]:
    return [r.name for r in runs.scan(root) if r.status == "finished" and (r.dir / "adapter").is_dir()]


def refresh_choices(root: Path):
    """For the Chat and Report tabs when opened: the runs finished since the page loaded."""
    return gr.update(choices=with_adapters(root))
