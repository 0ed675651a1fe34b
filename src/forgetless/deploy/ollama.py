"""An Ollama Modelfile for an exported GGUF: FROM, the chat template in Ollama's Go template
language, the stop tokens and the system message.

Jinja chat templates cannot be translated in general, so the run's template is recognised instead:
it is rendered on a probe conversation and compared with the formats forgetless bundles (ChatML,
Llama-3, Gemma, Mistral [INST]); each has its Go template here. An unrecognised template gets no
TEMPLATE line and a warning (Ollama then reads the template stored in the GGUF file itself).
"""

from __future__ import annotations

from pathlib import Path

from forgetless import files
from forgetless.model.chat_format import BUNDLED

PROBE = [{"role": "user", "content": "USER-PROBE"}, {"role": "assistant", "content": "ANSWER-PROBE"}]

GO_TEMPLATES = {
    "chatml": (
        "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        "{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 -}}"
        "<|im_start|>{{ .Role }}\n{{ .Content }}{{ if not $last }}<|im_end|>\n{{ end }}"
        '{{- if and (ne .Role "assistant") $last }}<|im_end|>\n<|im_start|>assistant\n{{ end }}{{- end }}',
        ["<|im_start|>", "<|im_end|>"],
    ),
    "llama3": (
        "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
        "{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 -}}"
        "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}{{ if not $last }}<|eot_id|>{{ end }}"
        '{{- if and (ne .Role "assistant") $last }}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n'
        "{{ end }}{{- end }}",
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    ),
    "gemma": (
        "{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 -}}"
        '{{- if eq .Role "user" }}<start_of_turn>user\n{{ if and $.System (eq $i 0) }}{{ $.System }}\n\n{{ end }}'
        "{{ .Content }}<end_of_turn>\n{{ if $last }}<start_of_turn>model\n{{ end }}"
        '{{- else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}{{ if not $last }}<end_of_turn>\n'
        "{{ end }}{{- end }}{{- end }}",
        ["<start_of_turn>", "<end_of_turn>"],
    ),
    "mistral": (
        "{{- range $i, $_ := .Messages }}"
        '{{- if eq .Role "user" }}[INST] {{ if and $.System (eq $i 0) }}{{ $.System }}\n\n{{ end }}'
        "{{ .Content }} [/INST]"
        '{{- else if eq .Role "assistant" }} {{ .Content }}</s>{{- end }}{{- end }}',
        ["[INST]", "[/INST]"],
    ),
}


def recognise(tokenizer) -> str | None:
    """The bundled format the tokenizer's template renders like (from the user turn on), if any."""

    def tail(template: str | None) -> str:
        text = tokenizer.apply_chat_template(
            PROBE[:1], chat_template=template, tokenize=False, add_generation_prompt=True
        )
        return text[text.index("USER-PROBE") :]

    theirs = tail(None)
    return next((name for name in ("chatml", "llama3", "gemma", "mistral") if tail(BUNDLED[name]) == theirs), None)


def default_system(tokenizer, found: str) -> str | None:
    """The system message the tokenizer's own template writes into a conversation that has none
    (SmolLM2's and Qwen2.5's name the assistant), or None. Read by rendering the probe without a system
    message through the model's template, and with a marker as the system message through the bundled
    format it was recognised as: what stands where the marker stood is the default. The Go templates
    write a system turn only from SYSTEM, so without this Ollama answers without the turn the model
    was trained and evaluated with."""
    theirs = tokenizer.apply_chat_template(PROBE[:1], tokenize=False, add_generation_prompt=True)
    marked = [{"role": "system", "content": "SYSTEM-PROBE"}, PROBE[0]]
    try:
        ours = tokenizer.apply_chat_template(
            marked, chat_template=BUNDLED[found], tokenize=False, add_generation_prompt=True
        )
    except Exception:  # a format without a system role (Gemma's raises): no default to carry
        return None
    before, after = ours.split("SYSTEM-PROBE")
    if len(theirs) > len(before) + len(after) and theirs.startswith(before) and theirs.endswith(after):
        return theirs[len(before) : len(theirs) - len(after)]
    return None


def modelfile(gguf_name: str, tokenizer, system: str | None) -> tuple[str, str | None]:
    """(Modelfile text, the recognised format or None). `system`: the run's data.system_prompt; without
    one, the template's own default system message, if it writes one."""
    found = recognise(tokenizer)
    lines = [f"FROM ./{gguf_name}"]
    if found:
        go, stops = GO_TEMPLATES[found]
        lines.append(f'TEMPLATE """{go}"""')
        lines += [f'PARAMETER stop "{s}"' for s in stops]
        system = system or default_system(tokenizer, found)
    if system:
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n", found


def write(out_dir: Path, gguf_name: str, tokenizer, system: str | None) -> tuple[Path, str | None]:
    text, found = modelfile(gguf_name, tokenizer, system)
    return files.write_text(out_dir / "Modelfile", text), found
