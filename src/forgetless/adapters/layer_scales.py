"""Separate dial scales for groups of a LoRA adapter's layers: bottom, middle and top thirds of the
decoder, attention and MLP (six groups). Heterogeneous averaging (Lin et al., EMNLP 2024) found that
interpolating layers towards the base by different amounts trades task gain against forgetting better
than one ratio for the whole model; `forgetless tune-scale --per-layer` searches these groups.

A choice is saved the way every tool already reads an adapter: an `alpha_pattern` entry per adapted
module (PEFT, merge, serve, vLLM and the GGUF LoRA export honour it), its trained alpha × its group's
scale. The keys are the modules' full names, which PEFT's pattern match takes only for that module.
"""

from __future__ import annotations

import re

from peft.tuners.lora import LoraLayer
from peft.utils.other import get_pattern_key

DEPTHS = ("bottom", "middle", "top")
KINDS = ("attention", "mlp")
GROUPS = tuple(f"{d}/{k}" for d in DEPTHS for k in KINDS)
FAVOURED = {  # the groups each candidate of the search scales up beside the rest
    **{d: [f"{d}/{k}" for k in KINDS] for d in DEPTHS},
    **{k: [f"{d}/{k}" for d in DEPTHS] for k in KINDS},
}
_LAYER = re.compile(r"\.(\d+)\.")


def group_of(name: str, layers: int) -> str:
    """The group of an adapted module by its name: its decoder layer's third and its block's kind."""
    found = _LAYER.search(name)
    if found is None:
        raise ValueError(f"{name}: no layer index in the module's name")
    depth = DEPTHS[min(2, int(found.group(1)) * 3 // max(layers, 1))]
    kind = "attention" if re.search(r"attn|attention", name) else "mlp"
    return f"{depth}/{kind}"


def modules(model) -> dict[str, LoraLayer]:
    """The LoRA layers by their module name in the base model (as PEFT's config patterns see them)."""
    return {name.split("base_model.model.", 1)[-1]: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def layer_count(model) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(config.num_hidden_layers)


class Dial:
    """A loaded LoRA model's scales, set per group (or one for all) from its trained scaling."""

    def __init__(self, model):
        self.layers = layer_count(model)
        self.trained = {name: (m, dict(m.scaling)) for name, m in modules(model).items()}
        self.groups = {name: group_of(name, self.layers) for name in self.trained}

    def set(self, scales: dict[str, float] | float) -> None:
        for name, (m, scaling) in self.trained.items():
            s = scales if isinstance(scales, float | int) else scales[self.groups[name]]
            m.scaling.update({k: v * s for k, v in scaling.items()})


def alpha_pattern(config: dict, names: list[str], scales: dict[str, float], layers: int) -> dict[str, float]:
    """Per adapted module: its trained alpha (the trained `alpha_pattern`'s entry, else lora_alpha) × its
    group's scale."""
    trained = config.get("alpha_pattern") or {}
    out = {}
    for name in sorted(names):
        key = get_pattern_key(trained.keys(), name)
        out[name] = float(trained.get(key, config["lora_alpha"])) * scales[group_of(name, layers)]
    return out


def factor(record: dict, name: str) -> float:
    """How much a saved dial record scaled module `name`: its group's scale, or the one scale."""
    if record.get("layer_scales"):
        return record["layer_scales"][group_of(name, record["layers"])]
    return record["chosen"]
