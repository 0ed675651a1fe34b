"""Every `forgetless` subcommand in one table: name -> parser builder -> handler.

cli.py builds the parser from it and calls the handler of the subcommand given. The builders and
handlers live by theme (training.py, deploying.py, tools.py); a handler asks api.py for the work and
prints what the terminal shows. Importing this package loads the config schema only (api.py's rule),
so `forgetless --help` answers at once. To add a subcommand: a builder and a handler, one row here.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from forgetless.commands import deploying, tools, training


@dataclass(frozen=True)
class Command:
    name: str
    help: str  # the line `forgetless --help` shows
    build: Callable[[argparse.ArgumentParser], None]  # adds the subcommand's arguments to its parser
    run: Callable[[argparse.Namespace], int]  # does it; the exit status


TABLE = (
    Command(
        "train",
        "train from a YAML config or a shipped recipe "
        "(quickstart, quickstart-long, dpo, reward, rlhf, grpo; default quickstart)",
        training.train_parser,
        training.train,
    ),
    Command(
        "chat",
        "answer a prompt (or chat) with a model and optional adapters",
        deploying.chat_parser,
        deploying.chat,
    ),
    Command(
        "eval",
        "score a base model, base + adapter, or a merged model; writes eval.json",
        training.eval_parser,
        training.evaluate,
    ),
    Command(
        "report",
        "report.md + report.html for one run or several side by side",
        training.report_parser,
        training.report,
    ),
    Command(
        "compare",
        "train forgetting presets side by side and tabulate gain vs retention",
        training.compare_parser,
        training.compare,
    ),
    Command(
        "rehearsal",
        "self-rehearsal data: the base model's answers to general prompts",
        training.rehearsal_parser,
        training.rehearsal,
    ),
    Command(
        "merge",
        "fold a LoRA/DoRA/IA3 adapter into its base; save a plain transformers model",
        deploying.merge_parser,
        deploying.merge,
    ),
    Command(
        "export",
        "merge and write one GGUF file for llama.cpp / LM Studio, or GGUF + Modelfile for Ollama",
        deploying.export_parser,
        deploying.export,
    ),
    Command(
        "serve",
        "OpenAI-compatible HTTP server: one base model, several named adapters",
        deploying.serve_parser,
        deploying.serve,
    ),
    Command(
        "reward",
        "use a reward model trained with recipe=reward",
        deploying.reward_parser,
        deploying.reward,
    ),
    Command(
        "registry",
        "MLflow model registry: register, list, show, promote with gates",
        deploying.registry_parser,
        deploying.registry,
    ),
    Command(
        "data",
        "check a training set; remove duplicates or held-out rows; augment",
        tools.data_parser,
        tools.data,
    ),
    Command(
        "pipeline",
        "data check -> train -> evaluate -> register -> promote -> serve",
        deploying.pipeline_parser,
        deploying.pipeline,
    ),
    Command(
        "plan",
        "pick method, precision and batch settings that fit the hardware and goal",
        tools.plan_parser,
        tools.plan,
    ),
    Command(
        "env",
        "print the hardware forgetless sees",
        tools.env_parser,
        tools.env,
    ),
    Command(
        "ui",
        "browser UI: start runs, watch them learn and forget, compare, chat (pip install 'forgetless[ui]')",
        tools.ui_parser,
        tools.ui,
    ),
    Command(
        "tune-scale",
        "after training: scale the LoRA adapter between base (0) and trained (1) to meet a budget",
        training.tune_scale_parser,
        training.tune_scale,
    ),
)
COMMANDS = {c.name: c for c in TABLE}
