"""The Python API; each function mirrors a CLI subcommand.

A recipe is named by `recipe:` in the config and found in the plain dict `recipes()` returns; shipped
configs (src/forgetless/configs/*.yaml) are package data, so `load_config("dpo")` works from an
installed wheel as from a checkout.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from forgetless.config import loader
from forgetless.config.fields import TEMPLATE_NAMES
from forgetless.config.schema import Config
from forgetless.errors import OutOfMemory, UserError
from forgetless.model import chat_format

CONFIGS = Path(__file__).resolve().parent / "configs"
QUICKSTART = CONFIGS / "quickstart.yaml"


def recipes() -> dict[str, Callable[..., dict]]:
    """recipe name -> its run(cfg, resume); the output directory is claimed by run_recipe."""
    from forgetless.recipes import dpo, reward, rlhf, sft  # torch & transformers: not at `import forgetless`

    return {"sft": sft.run, "dpo": dpo.run, "reward": reward.run, "rlhf": rlhf.run}


def shipped_configs() -> list[str]:
    """Names of the shipped recipes (`forgetless train NAME`)."""
    return sorted(p.stem for p in CONFIGS.glob("*.yaml") if p.stem != "pipeline")


def config_path(ref: str | Path | None) -> Path:
    """A config file: a path, or the name of a shipped recipe (quickstart, quickstart-long, dpo, reward, rlhf)."""
    if ref is None:
        return QUICKSTART
    path = Path(ref)
    if path.is_file():
        return path
    if str(ref) in shipped_configs():
        return CONFIGS / f"{ref}.yaml"
    raise UserError(
        f"config file not found: {ref}; give a YAML file or a shipped recipe ({', '.join(shipped_configs())})"
    )


def load_config(cfg: str | Path | Config | dict | None = None, overrides: list[str] | None = None) -> Config:
    """A Config from a YAML path or shipped recipe name, a dict, or an existing Config, plus `key=value`
    overrides. With no file, the shipped quickstart recipe is the base, as for `forgetless train`."""
    if isinstance(cfg, Config):
        cfg = cfg.model_dump(mode="json")
    if isinstance(cfg, dict):
        return loader.validate(cfg, overrides)
    return loader.load(config_path(cfg), overrides)


def train(
    cfg: str | Path | Config | dict | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict:
    """Train as `forgetless train` does and return the run summary (also in output_dir/summary.json)."""
    from forgetless.model.hardware import quiet_third_party_logs  # torch: not at `import forgetless`

    quiet_third_party_logs()
    return run_recipe(load_config(cfg, overrides), resume=resume, overwrite=overwrite)


def run_recipe(cfg: Config, resume: bool = False, overwrite: bool = False) -> dict:
    """The config's recipe in its output_dir, after checking what can be checked without training:
    the files the config names exist and the model reference resolves. The main process claims the
    directory first (lock; an --overwrite'n run is kept until the new one can stand alone)."""
    from forgetless.model import loader as models  # torch & transformers, as above
    from forgetless.training import distributed, rundir  # as above

    for keys in loader.path_keys():
        for ref in _values(cfg, keys):
            if ref not in ("self", *TEMPLATE_NAMES) and not ref.startswith("builtin:") and not Path(ref).exists():
                raise UserError(f"{'.'.join(keys)}: file not found: {ref}")
    # a template jinja cannot parse fails here, not mid-run
    template = chat_format.template_text(cfg.data.chat_template) if cfg.data.chat_template else None
    cfg = _within_context(cfg, models.context_length(models.resolve(cfg.model.name)))
    if cfg.model.continue_from:
        from forgetless.adapters import continued  # peft, as above

        continued.adapter_of(cfg, template)  # a run that cannot be continued is refused before a directory is made
    claim = rundir.claim(Path(cfg.output_dir), cfg, resume, overwrite) if distributed.is_main() else nullcontext()
    with claim:
        try:
            return recipes()[cfg.recipe](cfg, resume=resume)
        except OutOfMemory as e:
            from forgetless.plan import planner  # torch, as above

            raise OutOfMemory(f"{e}; {planner.advice(cfg)}") from None


def _within_context(cfg: Config, context: int | None) -> Config:
    """data.max_length no longer than the model reads, capped with a line that says so (a config written
    out by forgetless spells the default 1024 out, so a set value is no sign of intent)."""
    if context is None or cfg.data.max_length <= context:
        return cfg
    print(
        f"[forgetless] data.max_length {cfg.data.max_length} -> {context}: {cfg.model.name} reads at most "
        f"{context} positions (max_position_embeddings)"
    )
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"max_length": context})})


def _values(cfg: Config, keys: tuple[str, ...]) -> list[str]:
    node = cfg
    for k in keys:
        node = getattr(node, k)
    return [] if node is None else [node] if isinstance(node, str) else list(node)


def compare_presets(cfg: Config, variants: dict[str, list[str]], overwrite: bool = False) -> list[dict]:
    """`forgetless compare`: train (or reuse) each variant and return the table rows."""
    from forgetless.recipes import compare  # as above

    return compare.run(cfg, variants, run_recipe, overwrite=overwrite)
