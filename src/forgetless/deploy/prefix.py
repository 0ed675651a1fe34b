"""The shared head of chat prompts, prefilled once per adapter and reused by every request that starts with it.

A chat template writes the same tokens before every user message that brings no system turn of its own:
SmolLM2's default system turn and the user turn's opening are 24 of the 46 tokens of a short question.
Causal attention makes the keys and values at those positions depend on those tokens alone (and on the
adapter), so a request whose prompt starts with exactly those tokens can start from their cache and
prefill only the rest. A prompt that starts otherwise (its own system turn, a completion) is prefilled
whole; nothing is guessed, the token ids are compared.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from forgetless.errors import UserError
from forgetless.model.chat_format import prompt_text

MIN_HEAD = 8  # a shorter head saves less than the bookkeeping costs
Kv = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, [rows, heads, positions, dim]


def shared_head(tokenizer) -> list[int]:
    """The token ids every templated prompt with no system turn of its own starts with: the longest common
    prefix of two prompts whose user text differs from its first character ([] without a template, or
    when the template refuses a lone user turn)."""
    if not getattr(tokenizer, "chat_template", None):
        return []
    try:
        a, b = (tokenizer(prompt_text(tokenizer, [{"role": "user", "content": text}]), add_special_tokens=False)
                ["input_ids"] for text in ("Hello there.", "42 is the answer?"))  # fmt: skip
    except UserError:
        return []
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return a[:n] if n >= MIN_HEAD else []


class Heads:
    """The shared head's keys and values per adapter name, made on first use. Cleared whenever an
    adapter is loaded or unloaded (a name may come back with other weights; forgetless's own formats
    change the base model itself)."""

    def __init__(self, tokens: list[int]):
        self.tokens = tokens
        self.kv: dict[str, Kv] = {}

    def covers(self, prompts: list[list[int]]) -> int:
        """How many leading tokens every prompt shares with the head: the head's length when each starts
        with it and goes on past it, else 0 (then they are prefilled whole)."""
        n = len(self.tokens)
        if n and all(len(p) > n and p[:n] == self.tokens for p in prompts):
            return n
        return 0

    def rows(self, names: list[str], compute: Callable[[str], Kv]) -> Kv:
        """The head's cache for a batch whose rows answer as `names`, each adapter's made once by
        `compute` (a forward pass of the head alone through that adapter)."""
        for name in dict.fromkeys(names):
            if name not in self.kv:
                self.kv[name] = compute(name)
        layers = range(len(self.kv[names[0]]))
        return [tuple(torch.cat([self.kv[n][i][j] for n in names]) for j in (0, 1)) for i in layers]

    def clear(self) -> None:
        self.kv.clear()
