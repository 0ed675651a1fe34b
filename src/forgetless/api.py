"""The Python API; each function mirrors a CLI subcommand."""

from __future__ import annotations

from pathlib import Path

from forgetless import config
from forgetless.config import Config

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = REPO_ROOT / "configs" / "quickstart.yaml"


def load_config(cfg: str | Path | Config | dict | None = None, overrides: list[str] | None = None) -> Config:
    """A Config from a YAML path, a dict, or an existing Config, plus `key=value` overrides.

    With no file, the shipped quickstart recipe is the base, as for `forgetless train`.
    """
    if isinstance(cfg, Config):
        cfg = cfg.model_dump(mode="json")
    if isinstance(cfg, dict):
        return config.validate(cfg, overrides)
    return config.load(cfg if cfg is not None else QUICKSTART, overrides)


def train(
    cfg: str | Path | Config | dict | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict:
    """Train as `forgetless train` does and return the run summary (also in output_dir/summary.json)."""
    from forgetless.hardware import quiet_third_party_logs

    quiet_third_party_logs()
    import importlib

    config = load_config(cfg, overrides)
    # recipe name -> module forgetless.recipes.<name> with run(cfg, resume, overwrite)
    recipe = importlib.import_module(f"forgetless.recipes.{config.recipe}")
    return recipe.run(config, resume=resume, overwrite=overwrite)
