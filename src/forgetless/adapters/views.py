"""The base model from the trained model's own weights: adapters switched off for the duration.

The LwF teacher, the retention and DPO references, and serving's "base" answers all read the base
this way, so no second copy of the model is ever held. A continuation (adapters/continued.py) holds an
earlier run's adapter beside the one it trains; its "base" is the earlier run's model.
"""

from __future__ import annotations

from contextlib import contextmanager

from accelerate.utils import extract_model_from_parallel

from forgetless.adapters import bottleneck, selective
from forgetless.errors import UserError

# A run that continues an earlier run's adapter (adapters/continued.py) holds it twice.
PREVIOUS = "previous"
TRAINED = "default"
CONTINUED = "_forgetless_continued"  # set by continued.load_previous: adapter names alone are user-chosen in serve


def switchable(model) -> bool:
    """Whether base_view can give this model's base: a method is attached that it can switch off."""
    inner = extract_model_from_parallel(model)
    return hasattr(inner, "disable_adapter") or bottleneck.present(inner) or hasattr(inner, selective.INITIAL)


@contextmanager
def base_view(model):
    """The base model from the same weights (the LwF teacher, the retention and DPO reference).

    No second copy of the model exists: PEFT routes the forward pass around its adapter layers,
    our bottleneck adapters pass their input through, and bitfit/selective/full swap their
    trained tensors back to the initial values for the duration. `model` may be wrapped by
    accelerate/DDP. Use under no_grad.
    """
    inner = extract_model_from_parallel(model)
    if is_continued(inner):  # a continuation (adapters/continued.py): the base is the earlier run's model
        with previous_view(inner):
            yield inner
    elif hasattr(inner, "disable_adapter"):
        with inner.disable_adapter():
            yield inner
    elif bottleneck.present(inner):
        with bottleneck.disabled(inner):
            yield inner
    elif hasattr(inner, selective.INITIAL):
        with selective.initial_weights(inner):
            yield inner
    else:
        raise UserError("this needs the base model's predictions, but the model has no method attached to switch off")


def is_continued(inner) -> bool:
    """A model that trains a continuation and can switch to the earlier run's adapter."""
    configs = getattr(inner, "peft_config", None)
    return getattr(inner, CONTINUED, False) and isinstance(configs, dict) and TRAINED in configs


@contextmanager
def previous_view(inner):
    """A's model from the same weights: the frozen `previous` adapter active for the duration.
    PEFT's set_adapter also sets requires_grad; the flags are put back exactly as they were, so the
    optimizer's view of what trains never changes. Use under no_grad."""
    flags = [(p, p.requires_grad) for p in inner.parameters()]
    inner.base_model.set_adapter(PREVIOUS, inference_mode=True)
    try:
        yield inner
    finally:
        inner.base_model.set_adapter(TRAINED, inference_mode=True)
        for p, flag in flags:
            p.requires_grad_(flag)
