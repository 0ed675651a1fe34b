"""The shapes of the models users pick, so that `forgetless plan` works offline.

Each row is the model's published config.json (vocabulary, hidden size, layers, MLP width, heads,
key/value heads, head size, experts) and its published parameter count, which
tests/plan/test_shapes.py checks the shape against (within 2%). A name is looked up exactly
(organisation dropped, case and instruct/chat suffixes ignored), never guessed from a size in it.
Gemma-3 4B-27B are vision-language models: their counts include the 417M SigLIP vision tower
(`extra`), which loads with the model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from forgetless.errors import UserError
from forgetless.model import loader as models
from forgetless.plan.memory import Shape, shape_from_config

SIGLIP = 417_000_000  # Gemma-3's vision encoder and projector, part of the published 4B-27B counts


@dataclass(frozen=True)
class Known:
    shape: Shape
    published: float  # parameters, as the model card (or the hub's safetensors count) states them, rounded as there
    names: tuple[str, ...]  # other names of the same weights' shape


def _s(vocab, hidden, layers, inter, heads, kv, head_dim=None, tied=False, experts=0, active=0, extra=0):
    return Shape(vocab, hidden, layers, inter, heads, kv, tied, head_dim, experts, active, extra)


KNOWN: dict[str, Known] = {
    # Llama 3.x (meta-llama/Llama-3.x-*B[-Instruct])
    "llama-3.2-1b": Known(_s(128256, 2048, 16, 8192, 32, 8, 64, tied=True), 1.23e9, ()),
    "llama-3.2-3b": Known(_s(128256, 3072, 28, 8192, 24, 8, 128, tied=True), 3.21e9, ()),
    "llama-3.1-8b": Known(_s(128256, 4096, 32, 14336, 32, 8), 8.03e9, ("meta-llama-3-8b", "llama-3-8b")),
    "llama-3.1-70b": Known(_s(128256, 8192, 80, 28672, 64, 8), 70.6e9, ("llama-3.3-70b", "meta-llama-3-70b")),
    # Llama 2 (meta-llama/Llama-2-*b[-chat]-hf)
    "llama-2-7b": Known(_s(32000, 4096, 32, 11008, 32, 32), 6.74e9, ()),
    "llama-2-13b": Known(_s(32000, 5120, 40, 13824, 40, 40), 13.0e9, ()),
    "llama-2-70b": Known(_s(32000, 8192, 80, 28672, 64, 8), 69.0e9, ()),
    # Mistral and Mixtral (mistralai/*)
    "mistral-7b": Known(_s(32768, 4096, 32, 14336, 32, 8), 7.25e9, ()),
    "mixtral-8x7b": Known(_s(32000, 4096, 32, 14336, 32, 8, experts=8, active=2), 46.7e9, ()),
    "mixtral-8x22b": Known(_s(32768, 6144, 56, 16384, 48, 8, experts=8, active=2), 141e9, ()),
    # Qwen2.5 (Qwen/Qwen2.5-*B[-Instruct])
    "qwen2.5-0.5b": Known(_s(151936, 896, 24, 4864, 14, 2, tied=True), 0.49e9, ()),
    "qwen2.5-1.5b": Known(_s(151936, 1536, 28, 8960, 12, 2, tied=True), 1.54e9, ()),
    "qwen2.5-3b": Known(_s(151936, 2048, 36, 11008, 16, 2, tied=True), 3.09e9, ()),
    "qwen2.5-7b": Known(_s(152064, 3584, 28, 18944, 28, 4), 7.61e9, ()),
    "qwen2.5-14b": Known(_s(152064, 5120, 48, 13824, 40, 8), 14.7e9, ()),
    "qwen2.5-32b": Known(_s(152064, 5120, 64, 27648, 40, 8), 32.5e9, ()),
    "qwen2.5-72b": Known(_s(152064, 8192, 80, 29568, 64, 8), 72.7e9, ()),
    # Qwen3 (Qwen/Qwen3-*B): head size 128 whatever the hidden size
    "qwen3-0.6b": Known(_s(151936, 1024, 28, 3072, 16, 8, 128, tied=True), 0.6e9, ()),
    "qwen3-1.7b": Known(_s(151936, 2048, 28, 6144, 16, 8, 128, tied=True), 1.7e9, ()),
    "qwen3-4b": Known(_s(151936, 2560, 36, 9728, 32, 8, 128, tied=True), 4.0e9, ()),
    "qwen3-8b": Known(_s(151936, 4096, 36, 12288, 32, 8, 128), 8.2e9, ()),
    "qwen3-14b": Known(_s(151936, 5120, 40, 17408, 40, 8, 128), 14.8e9, ()),
    "qwen3-32b": Known(_s(151936, 5120, 64, 25600, 64, 8, 128), 32.8e9, ()),
    # Gemma 2 and 3 (google/gemma-*-it): tied embeddings, large head size
    "gemma-2-2b": Known(_s(256000, 2304, 26, 9216, 8, 4, 256, tied=True), 2.61e9, ()),
    "gemma-2-9b": Known(_s(256000, 3584, 42, 14336, 16, 8, 256, tied=True), 9.24e9, ()),
    "gemma-2-27b": Known(_s(256000, 4608, 46, 36864, 32, 16, 128, tied=True), 27.2e9, ()),
    "gemma-3-1b": Known(_s(262144, 1152, 26, 6912, 4, 1, 256, tied=True), 1.0e9, ()),
    "gemma-3-4b": Known(_s(262208, 2560, 34, 10240, 8, 4, 256, tied=True, extra=SIGLIP), 4.3e9, ()),
    "gemma-3-12b": Known(_s(262208, 3840, 48, 15360, 16, 8, 256, tied=True, extra=SIGLIP), 12.2e9, ()),
    "gemma-3-27b": Known(_s(262208, 5376, 62, 21504, 32, 16, 128, tied=True, extra=SIGLIP), 27.4e9, ()),
    # Phi-3.5 (microsoft/Phi-3.5-mini-instruct): fused qkv and gate/up projections, same sizes
    "phi-3.5-mini": Known(_s(32064, 3072, 32, 8192, 32, 32), 3.82e9, ("phi-3-mini-4k", "phi-3-mini-128k")),
}

SUFFIXES = re.compile(r"(-instruct|-it|-chat|-hf|-base|-v\d+(\.\d+)?|-\d{4})+$")


def key(model: str) -> str:
    """'Qwen/Qwen2.5-7B-Instruct' -> 'qwen2.5-7b'; 'mistralai/Mistral-7B-Instruct-v0.3' -> 'mistral-7b'."""
    return SUFFIXES.sub("", model.rsplit("/", 1)[-1].lower())


def lookup(model: str) -> tuple[str, Known] | None:
    k = key(model)
    for name, known in KNOWN.items():
        if k == name or k in known.names:
            return name, known
    return None


def resolve_shape(model: str) -> tuple[Shape, str]:
    """(shape, where it came from): a local model directory, the embedded alias, the table above
    (offline), or the hub's config.json for a model not in the table."""
    path = Path(model)
    if (path / "config.json").is_file():
        return shape_from_config(json.loads((path / "config.json").read_text())), str(path / "config.json")
    if model in models.ALIASES:
        return resolve_shape(models.resolve(model))
    found = lookup(model)
    if found:
        return found[1].shape, f"the built-in table ({found[0]}, published config)"
    if model.count("/") == 1 and not path.exists():
        local = models.hub_file(model, "config.json")  # None: offline, gated or unknown
        if local:  # else say what is known instead of guessing from the name
            return shape_from_config(json.loads(Path(local).read_text())), f"hub:{model}/config.json"
    raise UserError(
        f"no shape for model '{model}': it is not a local model directory, not in the built-in table and its "
        f"config.json could not be fetched; give a model directory or one of: {', '.join(KNOWN)}"
    )
