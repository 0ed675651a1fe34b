"""`forgetless chat`: try a base model and its adapters by hand, one prompt or interactively."""

from __future__ import annotations

import json
from pathlib import Path

from forgetless import model as models
from forgetless.adapters import OWN_FORMAT, activate, base_view, load_several
from forgetless.config import ModelConfig
from forgetless.errors import UserError
from forgetless.eval.generate import generate

BASE = "base"


def adapter_dir(ref: str) -> Path:
    """Accept a result directory (PEFT's adapter_config.json or our forgetless_adapter.json) or a run
    directory that holds adapter/."""
    path = Path(ref)
    for candidate in (path / "adapter", path):
        if any((candidate / f).is_file() for f in ("adapter_config.json", OWN_FORMAT)):
            return candidate
    raise UserError(
        f"{ref} is not an adapter directory (no adapter_config.json or {OWN_FORMAT}) nor a run directory with adapter/"
    )


def base_of(run_adapter: Path) -> str | None:
    """The model reference a run was trained from, read from its config.yaml when present."""
    cfg = run_adapter.parent / "config.yaml"
    if cfg.is_file():
        import yaml

        return (yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}).get("model", {}).get("name")
    meta = run_adapter / OWN_FORMAT
    meta = meta if meta.is_file() else run_adapter / "adapter_config.json"
    return json.loads(meta.read_text(encoding="utf-8")).get("base_model_name_or_path")


class Chat:
    def __init__(
        self,
        model_ref: str | None,
        adapters: list[str],
        system: str | None,
        max_new_tokens: int,
        quantization: str = "none",
    ):
        named = []
        for i, item in enumerate(adapters):
            name, sep, ref = item.partition("=")
            named.append(
                (name, adapter_dir(ref)) if sep else (f"adapter{i + 1}" if i else "adapter", adapter_dir(item))
            )
        model_ref = model_ref or (base_of(named[0][1]) if named else None) or "smollm2-135m-instruct"
        self.model, self.tokenizer, _ = models.load(ModelConfig(name=model_ref, quantization=quantization))
        self.names = [BASE]
        self.active = BASE
        if named:
            self.model = load_several(self.model, dict(named))
            self.names += [n for n, _ in named]
            self.use(named[0][0])
        self.system, self.max_new_tokens = system, max_new_tokens
        self.history: list[dict] = []

    def use(self, name: str) -> None:
        if name not in self.names:
            raise UserError(f"unknown adapter '{name}'; loaded: {', '.join(self.names)}")
        if name != BASE:
            activate(self.model, name)
        self.active = name

    def answer(self, prompt: str, keep_history: bool = False) -> str:
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + self.history
        messages = messages + [{"role": "user", "content": prompt}]
        if self.active == BASE and len(self.names) > 1:
            with base_view(self.model):
                reply = generate(self.model, self.tokenizer, [messages], self.max_new_tokens)[0]
        else:
            reply = generate(self.model, self.tokenizer, [messages], self.max_new_tokens)[0]
        if keep_history:
            self.history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
        return reply

    def interactive(self) -> None:
        print(f"models: {', '.join(self.names)} (active: {self.active}). Commands: /use NAME, /reset, /quit")
        while True:
            try:
                line = input(f"[{self.active}] > ").strip()
            except EOFError:
                return
            if line in ("/quit", "/exit"):
                return
            if line == "/reset":
                self.history = []
            elif line.startswith("/use "):
                try:
                    self.use(line.split(maxsplit=1)[1])
                    self.history = []
                except UserError as e:
                    print(e)
            elif line:
                print(self.answer(line, keep_history=True))
