"""Chat templates for tokenizers that have none (base models), chosen with `data.chat_template`.

Written here from the formats' public descriptions, not copied from the model repositories. Each
is prefix-consistent (a conversation's rendering starts with the rendering of any of its prefixes),
which answer masking relies on. `qwen` is ChatML, the format Qwen's instruct models use; `gemma`
has no system role, like Gemma's own template, so render.py folds a system message into the first
user turn for it.
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


def resolve(choice: str, where: str = "data.chat_template") -> str:
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


def apply(tokenizer, choice: str | None) -> None:
    """Set data.chat_template on the tokenizer (it is saved with the adapter), saying what it replaces."""
    if choice is None:
        return
    own = "the tokenizer's own template" if getattr(tokenizer, "chat_template", None) else "no template"
    tokenizer.chat_template = resolve(choice)
    print(f"[forgetless] chat template: {choice} (data.chat_template; replaces {own})")
