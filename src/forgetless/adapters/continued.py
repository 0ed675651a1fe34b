"""Task after task: a run that continues an earlier run's LoRA/DoRA adapter (--continue-from runs/A).

The earlier adapter is loaded twice over the one copy of the base weights: a frozen copy named
`previous` and a trainable copy, `default`, that this run goes on training. Until `default` exists the
model *is* A's model, so everything the recipe measures "on the base" (the before scores, the
retention references, the self-rehearsal answers, the cached LwF teacher) is measured on A. During
training, `base_view` switches to `previous` for the LwF teacher and the retention KL. The result is
still one plain PEFT adapter over the original base (only `default` is saved), so merge, serve, chat
and export need nothing new. TRL keeps its PEFT DPO reference the same way (a second adapter name).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml
from peft import PeftModel
from torch import nn

from forgetless.adapters import saved
from forgetless.adapters.views import CONTINUED, PREVIOUS, TRAINED
from forgetless.config.schema import Config
from forgetless.errors import UserError
from forgetless.model import loader as models


def adapter_of(cfg: Config, template: str | None = None) -> Path:
    """The earlier run's adapter directory, after checking that this run can continue it: same base
    model, a LoRA/DoRA adapter of the method, rank, alpha, dropout and target modules this config asks
    for, and no other chat template than its own (`template`: data.chat_template's text). One line per
    refusal."""
    ref = cfg.model.continue_from
    key = f"model.continue_from={ref}"
    run = Path(ref)
    if not (run / "summary.json").is_file():
        raise UserError(f"{key}: not a finished run directory (no summary.json); finish or resume that run first")
    directory = saved.adapter_dir(ref)
    method = saved.method_of(directory)
    if method not in ("lora", "dora"):
        raise UserError(f"{key}: its adapter is {method}; --continue-from continues LoRA or DoRA adapters")
    settings = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
    if method != cfg.peft.method or settings["r"] != cfg.peft.r:
        raise UserError(
            f"{key}: that adapter is {method} r={settings['r']} and this run continues it; "
            f"set peft.method={method} peft.r={settings['r']} (this config has {cfg.peft.method} r={cfg.peft.r})"
        )
    earlier = saved.base_of(directory)
    if earlier is not None and not models.same_model(earlier, cfg.model.name):
        raise UserError(f"{key}: that run trained {earlier}, this config trains {cfg.model.name}; use one base model")
    differ = _other_settings(run, settings, cfg)
    if differ:
        raise UserError(
            f"{key}: the adapter goes on training with that run's settings, and this config asks for others; "
            f"set {' '.join(f'peft.{k}={v}' for k, v in differ.items())} (this config has "
            f"{', '.join(f'{k}={getattr(cfg.peft, k)}' for k in differ)})"
        )
    theirs = saved.adapter_template(directory)
    if template is not None and theirs is not None and template != theirs:
        raise UserError(
            f"data.chat_template={cfg.data.chat_template}: {ref} was trained with another chat template, which "
            "this continuation keeps (the earlier model and its scores stand on it); remove data.chat_template"
        )
    return directory


CONTINUED_SETTINGS = ("alpha", "dropout", "target_modules")  # fixed by the adapter B goes on training


def _other_settings(run: Path, adapter_config: dict, cfg: Config) -> dict:
    """The LoRA settings of the earlier run (its config.yaml, else its adapter_config.json) that this
    config sets otherwise: they were silently replaced by A's before."""
    saved_cfg = run / "config.yaml"
    if saved_cfg.is_file():
        theirs = (yaml.safe_load(saved_cfg.read_text(encoding="utf-8")) or {}).get("peft", {})
    else:
        theirs = {"alpha": adapter_config.get("lora_alpha"), "dropout": adapter_config.get("lora_dropout")}
    return {k: theirs[k] for k in CONTINUED_SETTINGS if k in theirs and theirs[k] != getattr(cfg.peft, k)}


def fingerprint(ref: str) -> str:
    """What identifies A's model for the caches keyed by the base model: its adapter's bytes."""
    directory = saved.adapter_dir(ref)
    digest = hashlib.sha256()
    for f in sorted(directory.glob("adapter_*")):
        digest.update(f.name.encode() + f.read_bytes())
    return digest.hexdigest()[:16]


def load_previous(model, directory: Path) -> PeftModel:
    """The base with A's adapter as the frozen `previous`: from here on the model is A's model."""
    model = PeftModel.from_pretrained(model, str(directory), adapter_name=PREVIOUS, is_trainable=False)
    setattr(model, CONTINUED, True)
    for module in model.modules():
        dropout = getattr(module, "lora_dropout", None)
        if isinstance(dropout, nn.ModuleDict) and PREVIOUS in dropout:
            dropout[PREVIOUS] = nn.Identity()  # a teacher without dropout noise, in train mode too
    return model


def continue_training(model: PeftModel, directory: Path) -> PeftModel:
    """A second copy of A's adapter, trainable, made the active one (PEFT freezes the others)."""
    model.load_adapter(str(directory), adapter_name=TRAINED, is_trainable=True)
    model.set_adapter(TRAINED)
    return model


def on_original_base(cfg: Config) -> Config:
    """The config with no continuation, for code that loads only the original base: the caches keyed by
    the base model must not file the original base's results under the earlier run's model."""
    if not cfg.model.continue_from:
        return cfg
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"continue_from": None})})
