"""Chat formatting: the bundled chat templates (`data.chat_template`), system-turn folding, and the text a
model sees (a generation prompt, or a whole conversation with the character spans of its answers).

It belongs to the model, not to the data: the template is saved with the tokenizer and the adapter, and
generation, serving, export and training all render through it. Masking works on characters, not on
token guesses: for assistant turn i the conversation is rendered up to the generation prompt before it
and up to the end of that turn; the characters between are the answer (content plus the template's
end-of-turn marker, so the model learns to stop); data/render.py turns the spans into labels.

The bundled templates are written here from the formats' public descriptions, not copied from the model
repositories. Each is prefix-consistent (a conversation's rendering starts with the rendering of any of
its prefixes), which answer masking relies on. `qwen` is ChatML, the format Qwen's instruct models use;
`gemma` has no system role, like Gemma's own template, so a system message is folded into the first user
turn for it.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from forgetless.config.fields import TEMPLATE_NAMES
from forgetless.errors import UserError

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

GEMMA = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\n' + m['content'] | trim"
    " + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# Mistral's [INST] format; a system message goes in front of the first user turn (v0.1 style).
MISTRAL = (
    "{{ bos_token }}{% set ns = namespace(system='') %}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\n\n' %}"
    "{% elif m['role'] == 'user' %}{{ '[INST] ' + ns.system + m['content'] + ' [/INST]' }}{% set ns.system = '' %}"
    "{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
)

BUNDLED = dict(zip(TEMPLATE_NAMES, (CHATML, CHATML, LLAMA3, GEMMA, MISTRAL), strict=True))


def template_text(choice: str, where: str = "data.chat_template") -> str:
    """The template text for a bundled name or a .jinja file (checked to be a template jinja can read)."""
    if choice in BUNDLED:
        return BUNDLED[choice]
    path = Path(choice).expanduser()
    if path.suffix != ".jinja":
        raise UserError(f"{where}: '{choice}' is neither a bundled template ({', '.join(BUNDLED)}) nor a .jinja file")
    if not path.is_file():
        raise UserError(f"{where}: template file {path} not found")
    text = path.read_text(encoding="utf-8")
    try:
        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as e:
        raise UserError(f"{path}:{e.lineno}: not a valid jinja template ({e.message})") from None
    return text


def apply_template(tokenizer, choice: str | None) -> None:
    """Set data.chat_template on the tokenizer (it is saved with the adapter), saying what it replaces."""
    if choice is None:
        return
    own = "the tokenizer's own template" if getattr(tokenizer, "chat_template", None) else "no template"
    tokenizer.chat_template = template_text(choice)
    print(f"[forgetless] chat template: {choice} (data.chat_template; replaces {own})")


def with_system(messages: tuple[dict, ...], system_prompt: str | None) -> list[dict]:
    msgs = list(messages)
    if system_prompt and msgs and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return msgs


_TAKES_SYSTEM: dict[str, bool] = {}  # template text -> whether it renders a system message


def _takes_system(tokenizer) -> bool:
    """Whether the chat template renders a system message in a conversation that ends with an answer.
    Gemma's raises; Mistral-Nemo's writes it into the last user turn only when that turn is the last
    message, so every training row would lose it silently."""
    template = tokenizer.chat_template or ""
    if template not in _TAKES_SYSTEM:
        probe = [
            {"role": "system", "content": "SYSTEM-PROBE"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
        ]
        try:
            text = tokenizer.apply_chat_template(probe, tokenize=False)
        except jinja2.exceptions.TemplateError:  # raise_exception('System role not supported')
            text = ""
        _TAKES_SYSTEM[template] = "SYSTEM-PROBE" in text
    return _TAKES_SYSTEM[template]


def fold_system(tokenizer, messages: list[dict]) -> list[dict]:
    """For a template without a system role (or one that drops it from finished conversations), the
    system text goes in front of the first user turn, in training and generation alike (what Gemma's
    model card recommends); other templates get the messages unchanged."""
    if not messages or messages[0]["role"] != "system":
        return messages
    if _takes_system(tokenizer):
        return messages
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{system}\n\n{m['content']}"
            return rest
    return [{"role": "user", "content": system}, *rest]


def _chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(
            fold_system(tokenizer, messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except jinja2.exceptions.TemplateError as e:
        roles = "/".join(m["role"] for m in messages)
        raise UserError(f"the chat template refuses a conversation ({roles}): {e}") from None


def prompt_text(tokenizer, messages: list[dict]) -> str:
    """The text a model sees before it answers the last user turn (for generation)."""
    return _chat(tokenizer, messages, add_generation_prompt=True)


def answer_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Full rendered text and the character spans of every assistant answer in it.

    First by prefixes: the answer is what the conversation up to the end of that turn adds to the
    conversation up to its generation prompt. Templates that render a prefix differently from the
    whole (Mistral puts the system text in the last user turn; Phi-3 ends with EOS; Qwen3 adds an
    empty reasoning block to the last answer only) fall back to finding each answer in the text.
    A template whose generation prompt is not how it renders an answered turn (Gemma-4's prompt ends
    with an empty thought channel that finished turns drop) gets its last answer after the generation
    prompt: the row is the prompt the model is served plus the answer."""
    full = _chat(tokenizer, messages)
    last, served = len(messages) - 1, None  # served: the generation prompt before a last answer
    if messages and messages[-1]["role"] == "assistant":
        served = _chat(tokenizer, messages[:-1], add_generation_prompt=True)
    if served is not None and not full.startswith(served):
        earlier = _located_spans(tokenizer, messages[:-1], served)
        start, stop = _located_spans(tokenizer, messages, full)[-1]
        text = served + full[start:stop]
        return text, [*earlier, (len(served), len(text))]
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start_text = served if i == last else _chat(tokenizer, messages[:i], add_generation_prompt=True)
        end_text = full if i == last else _chat(tokenizer, messages[: i + 1])
        if not (full.startswith(start_text) and full.startswith(end_text)):
            return full, _located_spans(tokenizer, messages, full)
        spans.append((len(start_text), len(end_text)))
    return full, spans


def turn_end(tokenizer) -> str:
    """What the template writes after an answer's text (e.g. '<|eot_id|>', '<end_of_turn>\n', '</s>')."""
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ANSWER-PROBE"}]
    text = _chat(tokenizer, probe)
    return text[text.rindex("ANSWER-PROBE") + len("ANSWER-PROBE") :]


def _located_spans(tokenizer, messages: list[dict], full: str) -> list[tuple[int, int]]:
    """Each answer found in order in the full text, plus as much of the end-of-turn marker as follows it."""
    end, spans, cursor = turn_end(tokenizer), [], 0
    for m in messages:
        if m["role"] != "assistant":
            continue
        content = m["content"].strip()
        start = full.find(content, cursor)
        if not content or start < 0:
            raise UserError(
                "the tokenizer's chat template changes the answer text, so answer tokens cannot be located; "
                "set data.loss_on=all or data.chat_template to another template"
            )
        stop = start + len(content)
        while stop < len(full) and full[stop].isspace() and not end.startswith(full[stop]):
            stop += 1  # spaces the template keeps after the answer but not in its marker
        # the whole marker, or its first lines or tokens ('<|end|>\n' of '<|end|>\n<|endoftext|>' mid-chat)
        cuts = sorted({len(end), *(i + 1 for i, c in enumerate(end) if c in "\n>")}, reverse=True)
        stop += next((k for k in cuts if full.startswith(end[:k], stop)), 0)
        spans.append((start, stop))
        cursor = stop
    return spans
