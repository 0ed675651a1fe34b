"""`forgetless chat`: try a base model and its adapters by hand, one prompt or interactively."""

from __future__ import annotations

from forgetless.adapters.saved import activate, adapter_dir, base_of, load_several, use_adapter_templates
from forgetless.adapters.views import base_view
from forgetless.config.schema import ModelConfig
from forgetless.errors import UserError
from forgetless.model import loader as models
from forgetless.model.generate import generate

BASE = "base"


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
        use_adapter_templates(self.tokenizer, [d for _, d in named])
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
