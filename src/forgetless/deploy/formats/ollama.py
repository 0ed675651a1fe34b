"""An Ollama Modelfile for an exported GGUF: FROM, the chat template in Ollama's Go template language,
the stop tokens and the system message.

Jinja chat templates cannot be translated in general, but the ones models ship are turn-local: a
conversation renders as a head (the BOS text, the system turn or the template's default one), then
each user text followed by what comes between it and the answer, each answer followed by what comes
between it and the next user text, and after the last user text the generation prompt. Those pieces
are read off the run's own rendering (model/chat_format, which folds a system message into the first
user turn for templates without a system role) of marked conversations, assembled into a Go template,
and checked by rendering longer conversations both ways; a template that is not turn-local (Mistral-Nemo
writes the system text into the last user turn) gets no TEMPLATE line and a warning (Ollama then reads
the template stored in the GGUF file).

How Ollama feeds a template (its server/routes.go and template/template.go): the Modelfile's SYSTEM is
put first when a request has no system message, and the system messages stay in .Messages as well as
in .System, so the template writes the system turn from .System and skips system messages in its loop.
tests/families/test_ollama.py runs the written templates through Go's text/template the same way.
"""

from __future__ import annotations

from pathlib import Path

from forgetless import files
from forgetless.deploy.formats.gguf_vocab import adds_bos
from forgetless.model.chat_format import BUNDLED, prompt_text, turn_end

PROBE = [{"role": "user", "content": "USER-PROBE"}, {"role": "assistant", "content": "ANSWER-PROBE"}]
U1, A1, U2, A2, U3, SYSTEM = "⟦U1⟧", "⟦A1⟧", "⟦U2⟧", "⟦A2⟧", "⟦U3⟧", "⟦S⟧"


def _between(text: str, *marks: str) -> list[str]:
    """The text before the first mark, between consecutive marks, and after the last."""
    out, rest = [], text
    for mark in marks:
        if rest.count(mark) != 1:
            raise ValueError(mark)
        before, rest = rest.split(mark)
        out.append(before)
    return [*out, rest]


def pieces(tokenizer) -> dict[str, str] | None:
    """The head without and with a system message (split around its text), what follows a user text
    before an answer (after_user) or at the end (generation), and what follows an answer; None when the
    template is not turn-local."""
    u1, u2, u3 = ({"role": "user", "content": x} for x in (U1, U2, U3))
    a1, a2 = ({"role": "assistant", "content": x} for x in (A1, A2))
    system = {"role": "system", "content": SYSTEM}
    try:
        head, generation = _between(prompt_text(tokenizer, [u1]), U1)
        head_sys, after_sys, _ = _between(prompt_text(tokenizer, [system, u1]), SYSTEM, U1)
        _, after_user, after_answer, end = _between(prompt_text(tokenizer, [u1, a1, u2]), U1, A1, U2)
    except ValueError:
        return None
    found = {
        "head": head,
        "head_system": head_sys,
        "after_system": after_sys,
        "after_user": after_user,
        "after_answer": after_answer,
        "generation": end,
    }
    checks = ([u1, a1, u2, a2, u3], [system, u1, a1, u2, a2, u3], [system, u1])
    if end != generation or any(prompt_text(tokenizer, c) != _emulate(found, c) for c in checks):
        return None
    return found


def _emulate(p: dict[str, str], messages: list[dict]) -> str:
    """What the Go template below renders for `messages` (the same pieces, in Python)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    text = p["head_system"] + system + p["after_system"] if system else p["head"]
    turns = [m for m in messages if m["role"] != "system"]
    for i, m in enumerate(turns):
        last = i == len(turns) - 1
        if m["role"] == "user":
            text += m["content"] + (p["generation"] if last else p["after_user"])
        else:
            text += m["content"] + ("" if last else p["after_answer"])
    return text


def go_template(p: dict[str, str]) -> str:
    """The pieces as an Ollama template: the head from .System, then the user and assistant messages."""

    def go(action: str) -> str:
        return "{{" + action + "}}"

    return "".join(
        (
            go("- if .System "), p["head_system"], go(" .System "), p["after_system"],
            go(" else "), p["head"], go(" end "),
            go("- range $i, $_ := .Messages "), go("- $last := eq (len (slice $.Messages $i)) 1 "),
            go('- if eq .Role "user" '), go(" .Content "),
            go(" if $last "), p["generation"], go(" else "), p["after_user"], go(" end "),
            go('- else if eq .Role "assistant" '), go(" .Content "),
            go(" if not $last "), p["after_answer"], go(" end "),
            go("- end "), go("- end "),
        )
    )  # fmt: skip


def _without_bos(text: str, tokenizer) -> str:
    """llama.cpp puts BOS first itself when the exported vocabulary says so (gguf_vocab.adds_bos); the
    template's own BOS text would then make two."""
    bos = tokenizer.bos_token
    return text[len(bos) :] if adds_bos(tokenizer) and text.startswith(bos) else text


def recognise(tokenizer) -> str | None:
    """The bundled format the tokenizer's template renders like (from the user turn on), if any: a name
    for the export record."""

    def tail(template: str | None) -> str:
        text = tokenizer.apply_chat_template(
            PROBE[:1], chat_template=template, tokenize=False, add_generation_prompt=True
        )
        return text[text.index("USER-PROBE") :]

    theirs = tail(None)
    return next((name for name, text in BUNDLED.items() if tail(text) == theirs), None)


def default_system(p: dict[str, str]) -> str | None:
    """The system message the template (its `pieces`) writes into a conversation that has none (SmolLM2's
    and Qwen2.5's name the assistant), when writing it as the system message renders the same text."""
    if p["head"] == p["head_system"] + p["after_system"]:
        return None
    start, end = p["head_system"], p["after_system"]
    head = p["head"]
    if head.startswith(start) and head.endswith(end) and len(head) > len(start) + len(end):
        return head[len(start) : len(head) - len(end)]
    return None


def stops(tokenizer) -> list[str]:
    """Where Ollama stops: the marker that ends an answer's turn ('<|end|>' of Phi-3's '<|end|>\n<|endoftext|>')
    and the tokenizer's EOS."""
    marks = [(turn_end(tokenizer).split() or [""])[0], tokenizer.eos_token or ""]
    return [m for i, m in enumerate(marks) if m and m not in marks[:i]]


def modelfile(gguf_name: str, tokenizer, system: str | None) -> tuple[str, str | None]:
    """(Modelfile text, the bundled format the template renders like, or "turn-local" for another
    template it reproduces, or None when it has no TEMPLATE). `system`: the run's data.system_prompt;
    without one, the template's own default system message, if it writes one."""
    p = pieces(tokenizer)
    lines = [f"FROM ./{gguf_name}"]
    found = None
    if p is not None:
        system = system or default_system(p)
        p = {k: (_without_bos(v, tokenizer) if k.startswith("head") else v) for k, v in p.items()}
        found = recognise(tokenizer) or "turn-local"
        lines.append(f'TEMPLATE """{go_template(p)}"""')
        lines += [f'PARAMETER stop "{s}"' for s in stops(tokenizer)]
    if system:
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n", found


def write(out_dir: Path, gguf_name: str, tokenizer, system: str | None) -> tuple[Path, str | None]:
    text, found = modelfile(gguf_name, tokenizer, system)
    return files.write_text(out_dir / "Modelfile", text), found
