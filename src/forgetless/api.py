"""The Python API, and the one door every `forgetless` subcommand goes through (commands/ only parses
and prints): each function here does one subcommand's work and returns what it made.

A recipe is named by `recipe:` in the config and found in the plain dict `recipes()` returns; shipped
configs (src/forgetless/configs/*.yaml) are package data, so `load_config("dpo")` works from an
installed wheel as from a checkout. Importing this module loads the config schema only: torch,
transformers and the rest load inside the function that needs them, so `forgetless --help` and
`import forgetless` stay instant (each such import says so).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from forgetless.config import loader
from forgetless.config.fields import OWN_ANSWERS, TEMPLATE_NAMES
from forgetless.config.schema import Config
from forgetless.errors import OutOfMemory, UserError
from forgetless.model import chat_format

CONFIGS = Path(__file__).resolve().parent / "configs"
QUICKSTART = CONFIGS / "quickstart.yaml"


def recipes() -> dict[str, Callable[..., dict]]:
    """recipe name -> its run(cfg, resume); the output directory is claimed by run_recipe."""
    from forgetless.recipes import dpo, grpo, reward, rlhf, sft  # torch & transformers: not at `import forgetless`

    return {"sft": sft.run, "dpo": dpo.run, "reward": reward.run, "rlhf": rlhf.run, "grpo": grpo.run}


def shipped_configs() -> list[str]:
    """Names of the shipped recipes (`forgetless train NAME`)."""
    return sorted(p.stem for p in CONFIGS.glob("*.yaml") if p.stem != "pipeline")


def config_path(ref: str | Path | None) -> Path:
    """A config file: a path, or the name of a shipped recipe (quickstart, quickstart-long, dpo, reward, rlhf, grpo)."""
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
    path = config_path(cfg)
    return loader.load(path, own_data(path, overrides or []))


def own_data(path: Path, overrides: list[str]) -> list[str]:
    """A shipped recipe's validation file scores that recipe's task: with your own data.train and no
    data.validation it is dropped, so data.validation_split of your rows is held out instead (CLI and UI)."""
    given = {item.partition("=")[0].strip() for item in overrides}
    if path.resolve().parent != CONFIGS or "data.train" not in given or "data.validation" in given:
        return overrides
    if is_main_process():  # once, not per launched process
        held = "data.validation_split of your rows is held out (or set data.validation=FILE)"
        print(f"[forgetless] data.train replaces the {path.stem} recipe's data, not its validation file: {held}")
    return [*overrides, "data.validation=[]"]


def train(
    cfg: str | Path | Config | dict | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict:
    """Train as `forgetless train` does and return the run summary (also in output_dir/summary.json).
    A Config without overrides is used as it is: it was validated when it was made."""
    from forgetless.model.hardware import quiet_third_party_logs  # torch: not at `import forgetless`

    quiet_third_party_logs()
    cfg = cfg if isinstance(cfg, Config) and not overrides else load_config(cfg, overrides)
    return run_recipe(cfg, resume=resume, overwrite=overwrite)


def quiet_third_party_logs() -> None:
    """Third-party warnings a user cannot act on stay out of the terminal (model/hardware.py says which)."""
    from forgetless.model import hardware as hw  # torch, as above

    hw.quiet_third_party_logs()


def is_main_process() -> bool:
    """The process that prints and writes (the only one without a launcher)."""
    from forgetless.training import distributed  # torch, as above

    return distributed.is_main()


def launch_command(processes: int, argv: list[str]) -> list[str]:
    """`train --launch N`: the accelerate command that starts N processes running this command line."""
    from forgetless.training import distributed  # as above

    return distributed.launch_command(processes, distributed.without_launch(argv))


def run_recipe(cfg: Config, resume: bool = False, overwrite: bool = False) -> dict:
    """The config's recipe in its output_dir, after checking what can be checked without training:
    the files the config names exist and the model reference resolves. The main process claims the
    directory first (lock; an --overwrite'n run is kept until the new one can stand alone)."""
    from forgetless.model import loader as models  # torch & transformers, as above
    from forgetless.training import distributed, rundir  # as above

    for keys in loader.path_keys():
        for ref in _values(cfg, keys):
            if ref not in (*OWN_ANSWERS, *TEMPLATE_NAMES) and not ref.startswith("builtin:") and not Path(ref).exists():
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


def evaluate(cfg: Config, adapter: str | None, base: str | None, out: Path) -> dict:
    """`forgetless eval`: score a base model, base + adapter, or a merged model; writes eval.json to `out`."""
    from forgetless.recipes import evaluate as recipe  # torch & transformers, as above

    return recipe.run(cfg, adapter, base, Path(out))


def tune_scale(
    cfg: Config, run: Path, max_kl: float | None, min_task: float | None, grid: list[float], per_layer: bool = False
) -> dict:
    """`forgetless tune-scale`: the adapter scale that meets the budget, saved with the run's adapter."""
    from forgetless.recipes import tune_scale as recipe  # as above

    return recipe.run(cfg, Path(run), max_kl, min_task, grid, per_layer)


def compare(cfg: Config, presets: list[str], overwrite: bool = False) -> tuple[list[dict], str]:
    """`forgetless compare`: one run per forgetting preset; the rows and their markdown table."""
    from forgetless.recipes import compare as recipe  # as above

    rows = compare_presets(cfg, recipe.preset_variants(presets, cfg.forgetting.budget.set), overwrite=overwrite)
    return rows, recipe.table(rows, cfg.eval.metric)


def report(runs: list[Path], out: Path) -> tuple[Path, Path]:
    """`forgetless report`: report.md and report.html for one run or several side by side."""
    from forgetless.eval import report as reports  # matplotlib, as above

    return reports.write([Path(r) for r in runs], Path(out))


def result_tables(ev: dict) -> None:
    """Print eval.json's task and retention tables as the terminal shows them."""
    from forgetless.eval.report import print_tables  # as above

    print_tables(ev)


def reference_answers(cfg: Config, out: Path | None = None, force: bool = False) -> list[tuple[str, Path, bool]]:
    """`forgetless rehearsal generate`: the base model's answers training would otherwise generate on
    first use (self-rehearsal rows, retention references); (what, file, generated now) for each."""
    from forgetless.model import chat_format, hardware  # torch, as above
    from forgetless.model import loader as models  # as above
    from forgetless.reference import answers, rehearsal  # as above

    dev = hardware.device()
    dtype = str(hardware.resolve_dtype(cfg.model.precision, dev))
    model, tokenizer, model_path = models.load(cfg.model, dev)
    chat_format.apply_template(tokenizer, cfg.data.chat_template)  # generated as training renders them
    made, generated = rehearsal.self_rehearsal_file(cfg, model, tokenizer, model_path, dtype, out_dir=out, force=force)
    done = [("self-rehearsal data", made, generated)]
    e = cfg.eval
    made, generated = answers.ensure(
        "retention", model, tokenizer, cfg.model, model_path, dtype, e.retention_prompts,
        e.retention_max_new_tokens, out_dir=out, force=force, template=cfg.data.chat_template,
    )  # fmt: skip
    return [*done, ("retention reference answers", made, generated)]


def chat(model: str | None, adapters: list[str], system: str | None, max_new_tokens: int, quantization: str):
    """`forgetless chat`: a session that answers prompts with a model and its named adapters."""
    from forgetless.deploy.chat import Chat  # torch, as above

    return Chat(model, adapters, system, max_new_tokens, quantization)


def score_rewards(run: str, prompt: str, answers: list[str]) -> list[float]:
    """`forgetless reward score --prompt`: a reward model's score for each answer to one prompt."""
    from forgetless.objectives import reward_model  # torch, as above

    model, tokenizer = reward_model.load_reward_model(run)
    messages = [{"role": "user", "content": prompt}]
    return reward_model.score(model, tokenizer, [(messages, a) for a in answers])


def score_reward_file(run: str, path: Path) -> list[dict]:
    """`forgetless reward score --file`: every row of a JSONL file with its rewards."""
    from forgetless.objectives import reward_model  # as above

    return reward_model.score_file(run, Path(path))


def merge(adapter: str, out: Path, base: str | None = None, precision: str = "auto") -> dict:
    """`forgetless merge`: fold an adapter into its base and save a plain transformers model."""
    from forgetless.adapters.merge import merge as fold  # peft, as above

    return fold(adapter, Path(out), base, precision)


def export(ref: str, fmt: str, out: Path, quant: str = "f16", base: str | None = None) -> dict:
    """`forgetless export`: GGUF (merged or base), GGUF LoRA, or GGUF + Ollama Modelfile."""
    from forgetless.deploy import export as exporter  # torch, as above

    return exporter.run(ref, fmt, Path(out), quant, base)


def serve(model: str | None, adapters: list[str], host: str, port: int, api_key: str | None, **settings) -> None:
    """`forgetless serve`: the OpenAI-compatible server until interrupted (settings: deploy/serve.run's)."""
    from forgetless.deploy import serve as server  # fastapi & torch, as above

    server.run(model, server.named_adapters(adapters), host, port, api_key, **settings)


def register(run: Path, name: str, uri: str | None = None) -> dict:
    """`forgetless registry register`: a run's adapter as a new version with lineage and metrics."""
    from forgetless.deploy import registry  # mlflow, as above

    return registry.register(Path(run), name, uri)


def versions(name: str | None = None, uri: str | None = None) -> list[dict]:
    """`forgetless registry list / show`: registered versions with aliases, tags and metrics."""
    from forgetless.deploy import registry  # as above

    return registry.versions(name, uri)


def promote(name: str, version: int, alias: str, gates, uri: str | None = None) -> list[str]:
    """`forgetless registry promote`: set the alias if the version passes `gates`; the failed gates otherwise."""
    from forgetless.deploy import registry  # as above

    return registry.promote(name, version, alias, gates, uri)


def plan(model: str, gpu_memory_gb: float | None = None, bf16: bool = True, **goal):
    """`forgetless plan`: method, precision and batch settings for this machine (or a GPU of
    `gpu_memory_gb`); goal: goal, need, seq_len, batch_size, short_deadline, processes, sharding, budget_kl."""
    from forgetless.plan import planner  # torch, as above

    hw = planner.given(gpu_memory_gb, bf16) if gpu_memory_gb is not None else planner.detect()
    return planner.plan(model, hw, **goal)


def auto_overrides(cfg: Config) -> tuple[object, list[str]]:
    """`train --auto`: the plan for this machine from the config's model, length and batch, and the
    overrides it suggests, less the config's own choices (recipe, model, method, preset)."""
    from forgetless.plan import planner  # as above

    p = planner.plan_for(cfg)
    keep = ("recipe=", "rlhf.", "model.name=", "peft.method=", "forgetting.preset=")
    return p, [o for o in p.overrides() if not o.startswith(keep)]


def render_plan(p) -> str:
    from forgetless.plan import planner  # as above

    return planner.render(p)


def hardware() -> dict:
    """`forgetless env`: the devices, precisions and libraries forgetless sees."""
    from forgetless.model import hardware as hw  # torch, as above

    return hw.summary()


def check_data(files: list[str], against: list[str], near: float, model: str, max_length: int) -> tuple[dict, str]:
    """`forgetless data check`: the report (and its text) on rows, lengths, languages, duplicates, leaks."""
    from forgetless.data import check  # as above
    from forgetless.model import loader as models  # transformers, as above

    result = check.check(files, against, near, models.load_tokenizer(models.resolve(model)), max_length)
    return result, check.render(result)


def dedup(src: str, out: Path, near: float) -> tuple[int, int]:
    """`forgetless data dedup`: (kept, removed); the removed rows are logged beside `out`."""
    from forgetless.data import check  # as above

    return check.dedup(src, Path(out), near)


def decontaminate(src: str, against: list[str], out: Path, near: float) -> tuple[int, int]:
    """`forgetless data decontaminate`: (kept, removed) after dropping rows also in held-out files."""
    from forgetless.data import check  # as above

    return check.decontaminate(src, against, Path(out), near)


def augment(src: str, out: Path, settings) -> dict:
    """`forgetless data augment`: the original rows, then the kept variants; the counts."""
    from forgetless.reference import paraphrase  # torch, as above

    return paraphrase.augment_file(src, Path(out), settings)
