"""The New run page: a recipe or YAML, a data file (checked with `data check`), the main knobs with their
help text, the planner's suggestion for this machine, and a start button.

The page turns the form into `forgetless train CONFIG key=value ...` and validates it with the same loader
the CLI uses, so a bad setting shows the CLI's one-line error; the run then starts in its own process
(ui/runs.py).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import gradio as gr
from pydantic import BaseModel

from forgetless import api
from forgetless.config.schema import METHODS, Config
from forgetless.data import check
from forgetless.errors import UserError
from forgetless.model import loader as models
from forgetless.plan import planner
from forgetless.ui import runs

YAML_FILE = "(my YAML file)"
KEEP = "(recipe's value)"
# The knobs on the form (dotted config keys), in order; an empty field keeps the recipe's value.
TEXT_KNOBS = ("model.name", "train.max_steps", "train.lr", "peft.r", "forgetting.lwf.weight")
TEXT_KNOBS += ("forgetting.rehearsal.ratio", "forgetting.budget.kl", "forgetting.budget.mc_drop", "model.continue_from")
CHOICE_KNOBS = {
    "peft.method": METHODS,
    "forgetting.preset": ("none", "lwf", "rehearsal", "full"),
    "model.quantization": ("none", "4bit", "8bit"),
}


def help_text(dotted: str) -> str:
    """A config key's description from the schema: the same text as `forgetless train --help-config`."""
    model: type[BaseModel] = Config
    *sections, leaf = dotted.split(".")
    for s in sections:
        model = model.model_fields[s].annotation
    return model.model_fields[leaf].description or ""


def _stored(root: Path, name: str, upload: str | None) -> str | None:
    """An uploaded file copied beside the runs (RUNS/.ui/uploads/NAME/): Gradio's own copy is temporary."""
    if not upload:
        return None
    dest = runs.ui_dir(root) / "uploads" / name / Path(upload).name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(upload, dest)
    return str(dest)


def named(form: dict) -> dict:
    """The form with its run name, or a new one made now when the box is empty (it has no value made at
    page load: a load event that answers late would overwrite a name the user typed)."""
    return {**form, "name": form["name"].strip() or time.strftime("run-%Y%m%d-%H%M%S")}


def command(root: Path, form: dict) -> tuple[str, list[str]]:
    """The config and overrides the form asks for (uploads copied into RUNS/.ui/uploads/NAME/)."""
    name = form["name"].strip()
    runs.run_dir(root, name)  # a name that cannot be a folder is refused before anything is copied
    config = form["recipe"]
    if config == YAML_FILE:
        config = _stored(root, name, form["yaml_upload"]) or form["yaml_path"].strip()
        if not config:
            raise UserError("choose a YAML file: upload one or give its path")
    overrides = []
    data = _stored(root, name, form["data_upload"]) or form["data_path"].strip()
    if data:
        overrides.append(f"data.train={data}")
    for key in TEXT_KNOBS:
        if str(form[key]).strip():
            overrides.append(f"{key}={str(form[key]).strip()}")
    overrides += [f"{k}={form[k]}" for k in CHOICE_KNOBS if form[k] and form[k] != KEEP]
    overrides += [line.strip() for line in form["extra"].splitlines() if line.strip()]
    for item in overrides:
        if "=" not in item:
            raise UserError(f"'{item}' under more settings: write one KEY=VALUE per line, e.g. train.batch_size=2")
    return config, overrides


def validate(root: Path, form: dict):
    """The Config the run will train with, loaded as `forgetless train` would (its errors, one line)."""
    return checked(root, form)[2]


def checked(root: Path, form: dict) -> tuple[str, list[str], object]:
    """The form's config and overrides (uploads copied once), and the Config they load to."""
    config, overrides = command(root, form)
    out = runs.run_dir(root, form["name"].strip())
    return config, overrides, api.load_config(config, [*overrides, f"output_dir={out}"])


def start(root: Path, form: dict) -> str:
    name = form["name"].strip()
    try:
        config, overrides, _ = checked(root, form)
        if runs.run_dir(root, name).exists():
            raise UserError(f"run {name} exists; choose another name (the Runs page resumes it)")
        pid = runs.start(root, name, config, overrides)
    except UserError as e:
        return f"forgetless: error: {e}"
    return f"started run **{name}** (process {pid}); follow it on the Runs page"


def plan(root: Path, form: dict) -> str:
    try:
        p = planner.plan_for(validate(root, form))
    except UserError as e:
        return f"forgetless: error: {e}"
    return "```\n" + planner.render(p) + "\n```"


def data_check(root: Path, form: dict) -> str:
    """`forgetless data check` on the chosen file, with the chosen model's tokenizer."""
    try:
        cfg = validate(root, form)
        data = form["data_upload"] or form["data_path"].strip()
        files = [data] if data else list(cfg.data.train)
        tokenizer = models.load_tokenizer(models.resolve(cfg.model.name))
        report = check.check(files, [], tokenizer=tokenizer, max_length=cfg.data.max_length)
    except UserError as e:
        return f"forgetless: error: {e}"
    return "```\n" + check.render(report) + "\n```"


def page(root: Path) -> None:
    """The New run tab's components and events (inside a gr.Blocks context)."""
    form: dict[str, gr.components.Component] = {}
    with gr.Row():
        form["recipe"] = gr.Dropdown([*api.shipped_configs(), YAML_FILE], value="quickstart", label="recipe")
        form["name"] = gr.Textbox(label="run name", placeholder="empty: run-<date>-<time>", elem_id="run-name")
    with gr.Row():
        form["yaml_path"] = gr.Textbox(label="YAML file path", placeholder="my.yaml")
        form["yaml_upload"] = gr.File(
            label="or upload one (paths inside it: absolute or builtin:)",
            file_types=[".yaml", ".yml"],
            type="filepath",
            height=90,
        )
    with gr.Row():
        form["data_path"] = gr.Textbox(label="training data path (empty: the recipe's)", elem_id="data-path")
        form["data_upload"] = gr.File(
            label="or upload training data", type="filepath", height=90, elem_id="data-upload"
        )
    with gr.Row():
        for key, choices in CHOICE_KNOBS.items():
            form[key] = gr.Dropdown([KEEP, *choices], value=KEEP, label=key, info=help_text(key), elem_id=_id(key))
    with gr.Row():
        for key in TEXT_KNOBS:
            form[key] = gr.Textbox(label=key, info=help_text(key), placeholder="recipe's value", elem_id=_id(key))
    form["extra"] = gr.Textbox(
        label="more settings, one KEY=VALUE per line (forgetless train --help-config lists them)",
        lines=3,
        elem_id="extra",
    )
    with gr.Row():
        check_btn = gr.Button("Check data")
        plan_btn = gr.Button("Plan for this machine")
        start_btn = gr.Button("Start run", variant="primary", elem_id="start-run")
    message = gr.Markdown(elem_id="new-run-message")
    keys = list(form)

    def on(fn):
        return lambda *values: fn(root, named(dict(zip(keys, values, strict=True))))

    inputs = [form[k] for k in keys]
    start_btn.click(on(start), inputs, message)
    plan_btn.click(on(plan), inputs, message)
    check_btn.click(on(data_check), inputs, message)


def _id(key: str) -> str:
    return "knob-" + key.replace(".", "-")
