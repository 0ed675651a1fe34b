"""Methods that train some of the base model's own weights: BitFit, selective tuning, full fine-tuning.

bitfit     the bias terms only (Ben Zaken et al. 2022); Llama-family models have none, so it
           refuses there and points to `selective`.
selective  chosen parameter kinds (attention, MLP, norms) of chosen blocks (the top N by
           default), optionally the embeddings and the output head (Lee et al. 2019 found the
           top blocks carry most of the adaptation).
full       every weight.

The untrained model is the base itself. The base's view for LwF and retention (adapters.base_view)
is the same model with the trained tensors swapped back to their initial values for one forward
pass: a copy of the trained tensors only, never a second model (for `full` that copy is the whole
model, which the run's memory warning says).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from forgetless.errors import UserError

PARTS = {"attention": ("self_attn.",), "mlp": ("mlp.",)}  # prefixes inside a block
INITIAL = "forgetless_initial_weights"  # attribute on the model: [(parameter, initial value)]


def blocks(model) -> torch.nn.ModuleList:
    """The transformer blocks: the ModuleList with one entry per layer (model.model.layers for Llama)."""
    n = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise UserError(f"could not find the {n} transformer blocks of {type(model).__name__}")


def _block_prefixes(model, layers: int | list[int]) -> list[str]:
    found = blocks(model)
    n = len(found)
    chosen = list(range(n - layers, n)) if isinstance(layers, int) else layers
    bad = [i for i in chosen if not 0 <= i < n]
    if (isinstance(layers, int) and not 1 <= layers <= n) or bad:
        raise UserError(f"peft.layers={layers}: the model has blocks 0..{n - 1}; choose a count 1..{n} or indices")
    names = {id(m): name for name, m in model.named_modules()}
    return [names[id(found[i])] + "." for i in chosen]


def chosen_names(model, method: str, layers: int | list[int] = 2, parts: list[str] = ()) -> list[str]:
    """Names of the parameters that train under bitfit / selective / full."""
    named = [n for n, _ in model.named_parameters()]
    if method == "full":
        return named
    if method == "bitfit":
        biases = [n for n in named if n.endswith(".bias")]
        if not biases:
            raise UserError(
                f"peft.method=bitfit: {type(model).__name__} has no bias terms (Llama-family models such as "
                "SmolLM2 have none), so BitFit would train nothing; use peft.method=selective with "
                "peft.parts=[norm] or the top blocks (peft.layers=2) instead"
            )
        return biases
    prefixes = _block_prefixes(model, layers)
    # Embeddings and head by identity: with tied embeddings they are one tensor under one name.
    wide_modules = {"embeddings": model.get_input_embeddings(), "head": model.get_output_embeddings()}
    wide = {id(m.weight) for part, m in wide_modules.items() if part in parts and m is not None}
    out = []
    for n, p in model.named_parameters():
        block = next((b for b in prefixes if n.startswith(b)), None)
        if block is not None:
            local = n[len(block) :]
            keep = any(local.startswith(k) for part in ("attention", "mlp") if part in parts for k in PARTS[part])
            keep = keep or ("norm" in parts and "norm" in local and not local.startswith(("self_attn.", "mlp.")))
        else:
            # Outside the blocks: the final norm goes with the top blocks' norms.
            keep = id(p) in wide or ("norm" in parts and "norm" in n.rsplit(".", 2)[-2] and "layers." not in n)
        if keep:
            out.append(n)
    return out


def attach(model, method: str, layers: int | list[int] = 2, parts: list[str] = ()):
    """Freeze everything but the chosen parameters and remember their initial values (the base view)."""
    names = set(chosen_names(model, method, layers, parts))
    if not names:
        raise UserError(f"peft.method={method} with peft.parts={parts} selects no parameters of this model")
    model.requires_grad_(False)
    params = [p for n, p in model.named_parameters() if n in names]
    for p in params:
        p.requires_grad_(True)
    setattr(model, INITIAL, [(p, p.detach().clone()) for p in params])
    return model


@contextmanager
def initial_weights(model):
    """The trained tensors set back to their initial values for the duration (no_grad use only):
    swapping `.data` keeps the parameters (and the optimizer's references) the same objects."""
    pairs = getattr(model, INITIAL)
    trained = [p.data for p, _ in pairs]
    try:
        for p, initial in pairs:
            p.data = initial
        yield model
    finally:
        for (p, _), data in zip(pairs, trained, strict=True):
            p.data = data
