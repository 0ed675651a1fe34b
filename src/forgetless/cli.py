"""Command line: `forgetless train | eval | report | compare | rehearsal generate | chat | merge | export | serve |
reward score | registry | pipeline | plan | env | data | ui | tune-scale`.

Parsing only: one small function per subcommand builds its parser; commands.py does the work. Options
and `key=value` overrides may come in any order (`forgetless train my.yaml --resume train.max_steps=2`).
commands.py (and with it torch and transformers) is imported after parsing, so `forgetless --help`
answers at once.

User mistakes (UserError) print one line and exit 2; --debug shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import warnings

from forgetless.errors import UserError

# --debug is accepted after the subcommand too; SUPPRESS keeps the top-level value when it is absent there.
_COMMON = argparse.ArgumentParser(add_help=False)
_COMMON.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


def _train(sub) -> None:
    t = sub.add_parser(
        "train",
        parents=[_COMMON],
        help="train from a YAML config or a shipped recipe "
        "(quickstart, quickstart-long, dpo, reward, rlhf; default quickstart)",
    )
    t.add_argument(
        "items",
        nargs="*",
        metavar="[CONFIG] KEY=VALUE",
        help="config file or shipped recipe name, then dotted overrides",
    )
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run in output_dir")
    t.add_argument("--help-config", action="store_true", help="list every config key with default and help")
    t.add_argument("--auto", action="store_true", help="let the planner pick precision, 4-bit and batch settings")
    t.add_argument("--recipe", choices=["sft", "dpo", "reward", "rlhf"], help="shorthand for the override recipe=NAME")
    t.add_argument(
        "--continue-from",
        metavar="RUN",
        help="task after task: continue RUN's LoRA adapter, with RUN's model as the LwF teacher, retention "
        "reference and 'before' side (= model.continue_from=RUN)",
    )
    t.add_argument(
        "--launch",
        type=int,
        default=None,
        metavar="N",
        help="start N local processes with accelerate (data parallel; CPU processes use gloo)",
    )


def _chat(sub) -> None:
    c = sub.add_parser(
        "chat",
        parents=[_COMMON],
        help="answer a prompt (or chat) with a model and optional adapters",
    )
    c.add_argument("--model", default=None, help="model reference (default: the adapter's base, else the alias)")
    c.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="adapter directory or run directory; repeat to load several and /use NAME to switch",
    )
    c.add_argument("--prompt", default=None, help="answer this one prompt and exit")
    c.add_argument("--system", default=None, help="system prompt")
    c.add_argument("--max-new-tokens", type=int, default=256)
    c.add_argument("--quantization", choices=["none", "4bit", "8bit"], default="none")


def _eval(sub) -> None:
    v = sub.add_parser(
        "eval",
        parents=[_COMMON],
        help="score a base model, base + adapter, or a merged model; writes eval.json",
    )
    v.add_argument(
        "items",
        nargs="*",
        metavar="[CONFIG] KEY=VALUE",
        help="config file or shipped recipe name, then dotted overrides",
    )
    v.add_argument("--run", default=None, help="a run directory: its config, adapter and held-out data")
    v.add_argument("--adapter", default=None, help="adapter directory to evaluate on top of model.name")
    v.add_argument("--base", default=None, help="base model to compare a merged model with")
    v.add_argument("--out", default=None, help="output folder (default RUN/eval, else runs/eval)")


def _report(sub) -> None:
    o = sub.add_parser(
        "report",
        parents=[_COMMON],
        help="report.md + report.html for one run or several side by side",
    )
    o.add_argument("runs", nargs="+", metavar="RUN_DIR")
    o.add_argument("--out", default=None, help="output folder (default: the run itself, or runs/report)")


def _compare(sub) -> None:
    m = sub.add_parser(
        "compare",
        parents=[_COMMON],
        help="train forgetting presets side by side and tabulate gain vs retention",
    )
    m.add_argument(
        "items",
        nargs="*",
        metavar="[CONFIG] KEY=VALUE",
        help="config file or shipped recipe name, then dotted overrides",
    )
    m.add_argument("--variants", default="none,lwf,rehearsal,full", help="comma-separated forgetting presets")
    m.add_argument("--overwrite", action="store_true", help="retrain variants whose run directories hold other runs")


def _rehearsal(sub) -> None:
    r = sub.add_parser(
        "rehearsal",
        parents=[_COMMON],
        help="self-rehearsal data: the base model's answers to general prompts",
    )
    rsub = r.add_subparsers(dest="action", required=True)
    g = rsub.add_parser(
        "generate",
        parents=[_COMMON],
        help="generate and cache them now (training does it on first use otherwise)",
    )
    g.add_argument(
        "items",
        nargs="*",
        metavar="[CONFIG] KEY=VALUE",
        help="config file or shipped recipe name, then dotted overrides",
    )
    g.add_argument("--out", default=None, help="write into this folder instead of the cache")
    g.add_argument("--force", action="store_true", help="generate even when a cached file exists")


def _from_a_run(sub, name: str, what: str, out: str):
    """A subcommand that reads a run or adapter (merge, export): REF, --out, --base."""
    p = sub.add_parser(name, parents=[_COMMON], help=what)
    p.add_argument("adapter", metavar="RUN_DIR|ADAPTER_DIR" + ("|MODEL" if name == "export" else ""))
    p.add_argument("--out", required=True, help=out)
    p.add_argument("--base", default=None, help="base model (default: the run's model.name)")
    return p


def _merge(sub) -> None:
    what = "fold a LoRA/DoRA/IA3 adapter into its base; save a plain transformers model"
    mg = _from_a_run(sub, "merge", what, "new directory for the merged model")
    mg.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])


def _export(sub) -> None:
    what = "merge and write one GGUF file for llama.cpp / LM Studio, or GGUF + Modelfile for Ollama"
    ex = _from_a_run(sub, "export", what, "new directory for the files")
    ex.add_argument(
        "--format",
        default="gguf",
        choices=["gguf", "gguf-lora", "ollama"],
        help="gguf (merged; or a base model as it is), gguf-lora (the adapter alone), ollama (GGUF + Modelfile)",
    )
    ex.add_argument(
        "--quant", default="f16", help="f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1; q4_k_m q5_k_m q6_k with forgetless[gguf]"
    )


def _serve(sub) -> None:
    sv = sub.add_parser(
        "serve",
        parents=[_COMMON],
        help="OpenAI-compatible HTTP server: one base model, several named adapters",
    )
    sv.add_argument("--model", default=None, help="base model (default: the first adapter's base)")
    sv.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR", help="repeat for several")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--api-key", default=None, help="required Bearer key (or FORGETLESS_API_KEY)")
    sv.add_argument("--max-tokens", type=int, default=512, help="largest max_tokens a request may ask for")
    sv.add_argument("--max-prompt-tokens", type=int, default=2048, help="longest prompt accepted")
    sv.add_argument("--max-batch", type=int, default=8, help="requests decoded together (1: one at a time)")
    sv.add_argument("--max-queue", type=int, default=64, help="waiting requests beyond which the answer is 429")
    sv.add_argument("--request-timeout", type=float, default=600, help="seconds (queue included) before a 504")
    sv.add_argument("--adapter-root", default=None, help="POST /v1/adapters loads only from under this directory")
    sv.add_argument("--max-adapters", type=int, default=None, help="adapters kept loaded (least recently used go)")


def _reward(sub) -> None:
    rw = sub.add_parser("reward", parents=[_COMMON], help="use a reward model trained with recipe=reward")
    rwsub = rw.add_subparsers(dest="action", required=True)
    rws = rwsub.add_parser("score", parents=[_COMMON], help="score answers to a prompt, or every row of a JSONL file")
    rws.add_argument("--run", required=True, help="the reward run directory (or its adapter directory)")
    rws.add_argument("--prompt", default=None)
    rws.add_argument("--answer", action="append", default=[], help="an answer to score; repeat to compare")
    rws.add_argument("--file", default=None, help="{prompt, answer} or {prompt, chosen, rejected} rows")
    rws.add_argument("--out", default=None, help="write the scored rows here (default: stdout)")


def _registry(sub) -> None:
    rg = sub.add_parser(
        "registry",
        parents=[_COMMON],
        help="MLflow model registry: register, list, show, promote with gates",
    )
    rsub2 = rg.add_subparsers(dest="action", required=True)
    rr = rsub2.add_parser("register", parents=[_COMMON], help="record a run's adapter with lineage and metrics")
    rr.add_argument("run", metavar="RUN_DIR")
    rr.add_argument("--name", required=True)
    rl = rsub2.add_parser("list", parents=[_COMMON], help="registered models and versions")
    rl.add_argument("--name", default=None)
    rs = rsub2.add_parser("show", parents=[_COMMON], help="one model's versions (or one version) with tags and metrics")
    rs.add_argument("name")
    rs.add_argument("version", type=int, nargs="?")
    rp = rsub2.add_parser(
        "promote", parents=[_COMMON], help="set an alias (e.g. production) if the version passes the gates"
    )
    rp.add_argument("name")
    rp.add_argument("version", type=int)
    rp.add_argument("--alias", default="production")
    rp.add_argument("--gates", default=None, metavar="GATES.yaml", help="min_task / max_kl / max_benchmark_drop")
    rp.add_argument("--min-task", action="append", default=[], metavar="METRIC=VALUE")
    rp.add_argument("--max-kl", type=float, default=None)
    rp.add_argument("--max-benchmark-drop", type=float, default=None)
    for sp in (rr, rl, rs, rp):
        sp.add_argument("--tracking-uri", default=None, help="MLflow URI (default: sqlite in runs/registry)")


def _pipeline(sub) -> None:
    pp = sub.add_parser(
        "pipeline",
        parents=[_COMMON],
        help="data check -> train -> evaluate -> register -> promote -> serve",
    )
    pp.add_argument("file", metavar="PIPELINE.yaml", help="a pipeline YAML, or `pipeline` for the shipped example")


def _plan(sub) -> None:
    pl = sub.add_parser(
        "plan",
        parents=[_COMMON],
        help="pick method, precision and batch settings that fit the hardware and goal",
    )
    pl.add_argument("--model", default="smollm2-135m-instruct", help="alias, local dir, hub id, or a size (7b)")
    pl.add_argument("--gpu-memory", default=None, metavar="GB", help="plan for a GPU of this size (default: detect)")
    pl.add_argument("--no-bf16", action="store_true", help="with --gpu-memory: the GPU lacks bf16 (pre-Ampere)")
    pl.add_argument("--goal", default="sft", choices=["sft", "improve", "new-capability"])
    pl.add_argument(
        "--need", default=None, choices=["several-tasks", "fast-inference", "strengthen-prompts", "tiny-memory"]
    )
    pl.add_argument("--short-deadline", action="store_true", help="prefer DPO over RLHF")
    pl.add_argument("--seq-len", type=int, default=1024, help="longest training row in tokens")
    pl.add_argument("--batch-size", type=int, default=4, help="micro-batch to start from")
    pl.add_argument("--processes", type=int, default=1, help="devices training together (memory is per device)")
    pl.add_argument("--sharding", default="ddp", choices=["ddp", "zero2", "fsdp", "zero3"], help="with --processes")
    pl.add_argument("--write", default=None, metavar="CFG.yaml", help="write a ready config for the plan")


def _env(sub) -> None:
    e = sub.add_parser("env", parents=[_COMMON], help="print the hardware forgetless sees")
    e.add_argument("--configs", action="store_true", help="print the folder of the shipped configs instead")


def _data(sub) -> None:
    d = sub.add_parser(
        "data", parents=[_COMMON], help="check a training set; remove duplicates or held-out rows; augment"
    )
    dsub = d.add_subparsers(dest="action", required=True)
    c = dsub.add_parser("check", parents=[_COMMON], help="rows, errors, lengths, languages, duplicates, leakage")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.add_argument("--against", nargs="+", default=[], metavar="EVAL_FILE", help="held-out files to look for")
    c.add_argument("--near", type=float, default=0.85, help="character 5-gram Jaccard of a near duplicate")
    c.add_argument("--model", default="smollm2-135m-instruct", help="whose tokenizer counts tokens")
    c.add_argument("--max-length", type=int, default=1024, help="data.max_length to compare lengths with")
    c.add_argument("--json", default=None, metavar="OUT.json", help="also write the report as JSON")
    c.add_argument("--strict", action="store_true", help="a warning is an error (exit 2)")
    tools = {
        "dedup": "keep one row of every exact or near duplicate",
        "decontaminate": "drop rows also in held-out files",
    }
    for name, what in tools.items():
        x = dsub.add_parser(name, parents=[_COMMON], help=what + "; removed rows are logged beside --out")
        x.add_argument("file", metavar="FILE")
        if name == "decontaminate":
            x.add_argument("--against", nargs="+", required=True, metavar="EVAL_FILE")
        x.add_argument("--out", required=True, metavar="OUT.jsonl")
        x.add_argument("--near", type=float, default=0.85, help="character 5-gram Jaccard of a near duplicate")
    a = dsub.add_parser("augment", parents=[_COMMON], help="new rows by paraphrase, back-translation or synonyms")
    a.add_argument("file", metavar="FILE")
    a.add_argument("--out", required=True, metavar="OUT.jsonl", help="the original rows, then the kept variants")
    a.add_argument("--method", required=True, help="paraphrase | backtranslate | synonyms")
    a.add_argument("--n", type=int, default=2, help="variants tried per row")
    a.add_argument("--model", default="smollm2-135m-instruct", help="the instruct model that rewrites")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--answers", action="store_true", help="rewrite the expected answers too (off: labels stay)")
    a.add_argument("--rate", type=float, default=0.15, help="synonyms: share of the replaceable words replaced")
    a.add_argument("--max-drift", type=float, default=0.5, help="reject when the answer's NLL rises more (nats)")
    a.add_argument("--language", default="auto", help="auto | en | ja")


def _scales(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: comma-separated scales, e.g. 0.25,0.5,0.75,1") from None


def _tune_scale(sub) -> None:
    t = sub.add_parser(
        "tune-scale",
        parents=[_COMMON],
        help="after training: scale the LoRA adapter between base (0) and trained (1) to meet a budget",
    )
    t.add_argument("run", metavar="RUN_DIR")
    t.add_argument("items", nargs="*", metavar="KEY=VALUE", help="overrides of the run's config (eval.*)")
    budget = t.add_mutually_exclusive_group(required=True)
    budget.add_argument("--max-kl", type=float, help="largest scale whose KL to base per token is at most this")
    budget.add_argument("--min-task", type=float, help="smallest scale whose task score is at least this")
    t.add_argument("--grid", type=_scales, default=[0.25, 0.5, 0.75, 1.0], help="scales to score (default 0.25..1)")


def _ui(sub) -> None:
    u = sub.add_parser(
        "ui",
        parents=[_COMMON],
        help="browser UI: start runs, watch them learn and forget, compare, chat (pip install 'forgetless[ui]')",
    )
    u.add_argument("--runs", default="runs", help="the folder whose runs the UI shows and where it starts new ones")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=7860)
    u.add_argument("--api-key", default=None, help="password the browser must give (required off loopback)")


SUBCOMMANDS = [_train, _chat, _eval, _report, _compare, _rehearsal, _merge, _export, _serve, _reward, _registry, _data]
SUBCOMMANDS += [_pipeline, _plan, _env, _ui, _tune_scale]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forgetless", description="Fine-tune LLMs without catastrophic forgetting.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors too")
    sub = p.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse with options and overrides in any order: argparse stops filling a list positional at the
    first option, so the positionals after it come back unparsed; they join the list (config, overrides
    or run directories) they belong to. Unknown options stay errors."""
    p = parser()
    args, extra = p.parse_known_args(argv)
    lists = ("items", "runs", "files")
    target = next((name for name in lists if isinstance(getattr(args, name, None), list)), None)
    if extra and (target is None or any(a.startswith("-") for a in extra)):
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        setattr(args, target, [*getattr(args, target), *extra])
    args.argv = argv  # as typed: `train --launch` hands it on to the processes it starts
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else list(argv))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.debug:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    # bitsandbytes warns at import on CPUs with AVX512-BF16 that it cannot fetch an optional hub
    # kernel (hardware.quiet_third_party_logs); the level must be set before `commands` imports it.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        from forgetless import commands  # torch and transformers load here, after parsing: --help stays instant

        commands.hardware.quiet_third_party_logs()
        return commands.COMMANDS[args.command](args)
    except UserError as e:
        if args.debug:
            raise
        print(f"forgetless: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nforgetless: interrupted; resume with --resume", file=sys.stderr)
        return 130
    except OSError as e:  # a full disk where no writer named its file (each writes to a temporary name first)
        if args.debug or e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"forgetless: error: no space left on the device{where}; free space and run again", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `forgetless train --help-config | head`: the reader left, which is no error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 0
