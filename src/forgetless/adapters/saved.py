"""Saved fine-tuning results: write them, find them, read them back.

PEFT methods (lora, dora, prefix, prompt, ia3) use PEFT's own format (adapter_config.json +
adapter_model.safetensors). Our own methods write `forgetless_adapter.json` (method, base model,
settings) and `trained.safetensors` (the trained tensors under the base model's own parameter
names); `full` writes a whole transformers model beside the JSON. A run directory holds its result
in adapter/ and its config in config.yaml.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from accelerate.utils import extract_model_from_parallel
from peft import PeftModel, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from forgetless import files
from forgetless.adapters import bottleneck, selective
from forgetless.adapters.attaching import PEFT_METHODS
from forgetless.config.schema import METHOD_FIELDS, PeftConfig
from forgetless.errors import UserError

OWN_FORMAT = "forgetless_adapter.json"
TRAINED = "trained.safetensors"


def adapter_dir(ref: str) -> Path:
    """Accept a result directory (PEFT's adapter_config.json or our forgetless_adapter.json) or a run
    directory that holds adapter/."""
    path = Path(ref)
    for candidate in (path / "adapter", path):
        if any((candidate / f).is_file() for f in ("adapter_config.json", OWN_FORMAT)):
            check_readable(candidate)
            return candidate
    raise UserError(
        f"{ref} is not an adapter directory (no adapter_config.json or {OWN_FORMAT}) nor a run directory with adapter/"
    )


# (path, size, modification time) of the files check_readable has read whole in this process: one
# export or merge finds the same adapter several times, and a Gemma run's tokenizer.json takes a
# second to parse. A file rewritten since (another size or time) is read again.
_READABLE: set[tuple[str, int, int]] = set()


def check_readable(directory: Path) -> None:
    """Every weight file opens and every JSON parses: a copy cut short (a full disk, an interrupted
    transfer) is a one-line error here instead of a traceback from deep inside the loader."""
    for f in sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.json")):
        stat = f.stat()
        key = (str(f.resolve()), stat.st_size, stat.st_mtime_ns)
        if key in _READABLE:
            continue
        try:
            if f.suffix == ".json":
                json.loads(f.read_text(encoding="utf-8"))
            else:
                with safe_open(str(f), "pt") as weights:
                    weights.keys()
        except Exception as e:  # ValueError (JSON), UnicodeDecodeError, SafetensorError, OSError
            raise UserError(f"{f} is damaged or incomplete ({e}); copy it again, or retrain") from None
        _READABLE.add(key)


def base_of(run_adapter: Path) -> str | None:
    """The model reference a run was trained from, read from its config.yaml when present."""
    cfg = run_adapter.parent / "config.yaml"
    if cfg.is_file():
        return (yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}).get("model", {}).get("name")
    meta = run_adapter / OWN_FORMAT
    meta = meta if meta.is_file() else run_adapter / "adapter_config.json"
    return json.loads(meta.read_text(encoding="utf-8")).get("base_model_name_or_path")


def method_of(directory: Path) -> str:
    """The method a saved result was trained with: PEFT's peft_type, or our own format's method."""
    directory = Path(directory)
    if (directory / OWN_FORMAT).is_file():
        return json.loads((directory / OWN_FORMAT).read_text(encoding="utf-8"))["method"]
    cfg = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
    kinds = {"LORA": "dora" if cfg.get("use_dora") else "lora", "PREFIX_TUNING": "prefix", "PROMPT_TUNING": "prompt"}
    return kinds.get(cfg["peft_type"], cfg["peft_type"].lower())


def save(model, directory: Path, cfg: PeftConfig, base_model: str) -> None:
    """Write the trained result (PEFT's format, a whole model for full, or our own layout) beside
    `directory` and rename it into place: a kill or a full disk never leaves half an adapter (best/,
    adapter/) where the last good one was."""
    with files.replacing(directory) as tmp:
        _write(model, tmp, cfg, base_model)


def _write(model, directory: Path, cfg: PeftConfig, base_model: str) -> None:
    inner = extract_model_from_parallel(model)
    if cfg.method in PEFT_METHODS:  # only the trained adapter: a continuation also holds A's frozen copy
        inner.save_pretrained(directory, selected_adapters=["default"])
        return
    directory.mkdir(parents=True, exist_ok=True)
    if cfg.method == "full":
        inner.save_pretrained(directory)  # loads with AutoModelForCausalLM.from_pretrained
    else:
        trained = {n: p.detach().cpu().contiguous() for n, p in inner.named_parameters() if p.requires_grad}
        save_file(trained, str(directory / TRAINED))
    settings = {k: v for k, v in cfg.model_dump().items() if k == "method" or k in _own_settings(cfg.method)}
    facts = {"method": cfg.method, "base_model_name_or_path": base_model, "settings": settings, "format": 1}
    files.write_json(directory / OWN_FORMAT, facts)


def _own_settings(method: str) -> set[str]:

    return {k for k, users in METHOD_FIELDS.items() if method in users}


def load(model, directory: Path, adapter_name: str = "default"):
    """The base `model` with a saved result applied (PEFT model for PEFT methods), for inference."""
    directory = Path(directory)
    if not (directory / OWN_FORMAT).is_file():
        return PeftModel.from_pretrained(model, str(directory), adapter_name=adapter_name)
    facts = json.loads((directory / OWN_FORMAT).read_text(encoding="utf-8"))
    method, settings = facts["method"], facts["settings"]
    if method == "adapter":
        size, placement = settings["adapter_size"], settings["adapter_placement"]
        bottleneck.attach(model, size, placement, settings["adapter_activation"])
    weights = _saved_weights(directory, method)
    if method != "adapter":  # keep the base's values of the loaded tensors: base_view swaps them back
        own = dict(model.named_parameters())
        setattr(model, selective.INITIAL, [(own[n], own[n].detach().clone()) for n in weights if n in own])
    _copy_in(model, weights, directory)
    return model.requires_grad_(False)


def _copy_in(model, weights: dict[str, torch.Tensor], directory: Path) -> None:
    own = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(own))
    if unknown:
        raise UserError(
            f"{directory}: {len(unknown)} saved tensors (e.g. {unknown[0]}) do not exist in this base model"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            own[name].copy_(tensor.to(own[name].dtype))


def _saved_weights(directory: Path, method: str) -> dict[str, torch.Tensor]:
    if method != "full":
        return load_file(str(directory / TRAINED))
    weights: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        weights |= load_file(str(f))
    if not weights:
        raise UserError(f"{directory}: no *.safetensors weights in this full fine-tuning result")
    return weights


def restore(model, directory: Path) -> None:
    """Put the trainable weights saved by `save` (e.g. the best checkpoint) back into a training model."""
    directory = Path(directory)
    inner = extract_model_from_parallel(model)
    if (directory / OWN_FORMAT).is_file():
        _copy_in(inner, _saved_weights(directory, method_of(directory)), directory)
        return

    set_peft_model_state_dict(inner, load_file(str(directory / "adapter_model.safetensors")))


def load_several(model, dirs: dict[str, Path]):
    """The base with several named results side by side (chat and serve switch between them).

    PEFT keeps several adapters of one method in one model and switches with `set_adapter`; our
    own formats (adapter, bitfit, selective, full) change the model itself, so they load alone.
    """
    names = list(dirs)
    methods = {name: method_of(d) for name, d in dirs.items()}
    kinds = set(methods.values())
    if len(names) > 1 and (len(kinds) > 1 or not kinds <= PEFT_METHODS):
        found = ", ".join(f"{n}={m}" for n, m in methods.items())
        raise UserError(
            f"several results side by side must be PEFT adapters of one method (lora, dora, ia3, prefix or "
            f"prompt); got {found}: load the others one at a time"
        )
    model = load(model, dirs[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(dirs[name]), adapter_name=name)
    return model


def activate(model, name: str) -> None:
    """Route generation through the named result (PEFT models hold several; our own formats changed
    the model itself). Not hasattr(set_adapter): every transformers model has one (its own PEFT
    integration), which fails on a model without PEFT adapters."""
    if isinstance(model, PeftModel):
        model.set_adapter(name)


def adapter_template(directory: Path) -> str | None:
    """The chat template the adapter was trained with (saved beside it with the tokenizer), if any."""
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        path = Path(directory) / name
        if not path.is_file():
            continue
        if name.endswith(".jinja"):
            return path.read_text(encoding="utf-8")
        template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
    return None


def use_adapter_templates(tokenizer, directories) -> None:
    """Render prompts as the adapters were trained (data.chat_template may differ from the base's own).
    Adapters served together share one tokenizer, so their templates must agree."""
    found = {str(d): t for d in directories if (t := adapter_template(d)) is not None}
    if len(set(found.values())) > 1:
        raise UserError(
            f"adapters {', '.join(found)} were trained with different chat templates; serve them separately"
        )
    if found:
        tokenizer.chat_template = next(iter(found.values()))
