"""What every config section shares: unknown keys are errors, values are frozen, and file-path
fields say so in the schema itself (the loader resolves them relative to the YAML file that set them)."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

STRICT = ConfigDict(extra="forbid", frozen=True)
PATH = "path"  # json_schema_extra marker of a field that holds file paths


# data.chat_template names of the bundled templates (model/chat_format.py): names, not relative paths.
TEMPLATE_NAMES = ("chatml", "qwen", "llama3", "gemma", "mistral")

# `forgetless export --format` (and the pipeline's export stage): name -> what it writes (deploy/export.py).
EXPORT_FORMATS = {
    "gguf": "merged into one GGUF (or a base model as it is)",
    "gguf-lora": "the adapter alone as a GGUF LoRA",
    "ollama": "GGUF + Modelfile",
}


OWN_ANSWERS = ("self", "on_policy")  # rehearsal sources that are answers a model gives, not files


def path_field(*args: Any, **kw: Any) -> Any:
    """A Field holding a file path (or a list of them): relative paths in a YAML file are relative to
    that file; `self`, `on_policy` and `builtin:NAME` are kept as they are."""
    return Field(*args, json_schema_extra={PATH: True}, **kw)


def is_path(field) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get(PATH))
