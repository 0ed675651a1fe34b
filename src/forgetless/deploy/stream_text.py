"""The text side of a streamed answer: what each new token adds to it, and how much of the end to hold
back. The server sends text as tokens arrive, so each step decodes only the new token beside the few
before it (a whole-answer decode per token grows with the answer), never sends half a character, and
never sends the first characters of a stop string before it is known whether the stop follows."""

from __future__ import annotations


def new_text(tokenizer, ids: list[int], start: int, read: int, final: bool = False) -> tuple[str, int, int]:
    """The text that ids[read:] add to the answer, decoded beside ids[start:read] (the tokens just before)
    rather than the whole answer again: a token's leading space and a character split across tokens come
    out as the whole decode gives them. While the last character is incomplete (U+FFFD) nothing is added
    and (start, read) stay, unless `final`. Returns (text, start, read) for the next call."""
    before = tokenizer.decode(ids[start:read], skip_special_tokens=True)
    after = tokenizer.decode(ids[start:], skip_special_tokens=True)
    if len(after) > len(before) and (final or not after.endswith("\ufffd")):
        return after[len(before) :], read, len(ids)
    return "", start, read


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters to keep unsent: partial UTF-8 characters (decoded as U+FFFD), and
    before them the start of a stop string (a stop's first characters must not leak while the rest of
    a multi-byte character is still on its way)."""
    body = text.rstrip("\ufffd")
    partial = len(text) - len(body)
    return partial + max((k for s in stops for k in range(1, len(s)) if body.endswith(s[:k])), default=0)
