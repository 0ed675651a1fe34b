"""The subcommands that use a trained model: chat, merge, export, serve, reward score, registry, pipeline.

Each has a parser builder (`*_parser`) and a handler; the handler asks api.py for the work and prints
what the terminal shows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from forgetless import api, files
from forgetless.commands.arguments import subcommand
from forgetless.config import pipeline as pipeline_config
from forgetless.config.fields import EXPORT_FORMATS
from forgetless.errors import UserError
from forgetless.files import read_yaml

# serve's engine flags, handed on as they are (deploy/engine.Engine's settings)
ENGINE_FLAGS = ("max_batch", "max_queue", "request_timeout", "adapter_root", "max_adapters")


def chat_parser(c: argparse.ArgumentParser) -> None:
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


def chat(args: argparse.Namespace) -> int:
    session = api.chat(args.model, args.adapter, args.system, args.max_new_tokens, args.quantization)
    if args.prompt is not None:
        print(session.answer(args.prompt))
        return 0
    session.interactive()
    return 0


def _from_a_run(p: argparse.ArgumentParser, name: str, out: str) -> None:
    """A subcommand that reads a run or adapter (merge, export): REF, --out, --base."""
    p.add_argument("adapter", metavar="RUN_DIR|ADAPTER_DIR" + ("|MODEL" if name == "export" else ""))
    p.add_argument("--out", required=True, help=out)
    p.add_argument("--base", default=None, help="base model (default: the run's model.name)")


def merge_parser(mg: argparse.ArgumentParser) -> None:
    _from_a_run(mg, "merge", "new directory for the merged model")
    mg.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])


def merge(args: argparse.Namespace) -> int:
    facts = api.merge(args.adapter, Path(args.out), args.base, args.precision)
    print(
        f"[forgetless] merged the {facts['adapter_type']} adapter {facts['adapter']} into {facts['merged_into']} "
        f"({facts['base_model']}, {facts['dtype']}); saved to {args.out} "
        "(loads with AutoModelForCausalLM.from_pretrained)"
    )
    return 0


def export_parser(ex: argparse.ArgumentParser) -> None:
    _from_a_run(ex, "export", "new directory for the files")
    ex.add_argument(
        "--format",
        default="gguf",
        choices=list(EXPORT_FORMATS),
        help=", ".join(f"{name} ({does})" for name, does in EXPORT_FORMATS.items()),
    )
    ex.add_argument(
        "--quant",
        default="f16",
        help="f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1; q4_k_m q5_k_m q6_k with forgetless[gguf]; "
        "TYPE:f16=embed,attn,ffn keeps those tensor groups at f16 (q8_0:f16=embed: the embedding / output head)",
    )


def export(args: argparse.Namespace) -> int:
    record = api.export(args.adapter, args.format, Path(args.out), args.quant, args.base)
    path, size = f"{args.out}/{record['file']}", record["bytes"] / 1e6
    if args.format == "gguf-lora":
        print(
            f"[forgetless] wrote the adapter as a GGUF LoRA: {path} ({size:.1f} MB); llama.cpp: "
            f"llama-cli -m BASE.gguf --lora {path} (base: {record['base_gguf']})"
        )
        return 0
    what = f"{record['adapter']} merged into {record['base_model']}" if record["adapter"] else record["base_model"]
    print(f"[forgetless] exported {what} as {path} ({record['quant']}, {size:.1f} MB; llama.cpp: llama-cli -m {path})")
    if args.format == "ollama":
        found = record["template"] or "not recognised: Ollama reads the template stored in the GGUF file"
        print(f"[forgetless] Modelfile written (chat template: {found}); register it with: {record['register']}")
    return 0


def serve_parser(sv: argparse.ArgumentParser) -> None:
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


def serve(args: argparse.Namespace) -> int:
    settings = {k: getattr(args, k) for k in ENGINE_FLAGS}
    api.serve(
        args.model, args.adapter, args.host, args.port, args.api_key,
        max_tokens=args.max_tokens, max_prompt_tokens=args.max_prompt_tokens, **settings,
    )  # fmt: skip
    return 0


def reward_parser(rw: argparse.ArgumentParser) -> None:
    rws = subcommand(
        rw.add_subparsers(dest="action", required=True),
        "score",
        "score answers to a prompt, or every row of a JSONL file",
    )
    rws.add_argument("--run", required=True, help="the reward run directory (or its adapter directory)")
    rws.add_argument("--prompt", default=None)
    rws.add_argument("--answer", action="append", default=[], help="an answer to score; repeat to compare")
    rws.add_argument("--file", default=None, help="{prompt, answer} or {prompt, chosen, rejected} rows")
    rws.add_argument("--out", default=None, help="write the scored rows here (default: stdout)")


def reward(args: argparse.Namespace) -> int:
    if bool(args.file) == bool(args.prompt):
        raise UserError("reward score: give --prompt P --answer A (repeat --answer to compare), or --file F.jsonl")
    if args.file:
        rows = api.score_reward_file(args.run, Path(args.file))
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        if args.out:
            files.write_text(Path(args.out), text)
            print(f"[forgetless] scored {len(rows)} rows -> {args.out}")
        else:
            print(text, end="")
        return 0
    if not args.answer:
        raise UserError("reward score: --prompt needs at least one --answer")
    for answer, value in zip(args.answer, api.score_rewards(args.run, args.prompt, args.answer), strict=True):
        print(f"{value:+.4f}  {answer}")
    return 0


def registry_parser(rg: argparse.ArgumentParser) -> None:
    actions = rg.add_subparsers(dest="action", required=True)
    rr = subcommand(actions, "register", "record a run's adapter with lineage and metrics")
    rr.add_argument("run", metavar="RUN_DIR")
    rr.add_argument("--name", required=True)
    rl = subcommand(actions, "list", "registered models and versions")
    rl.add_argument("--name", default=None)
    rs = subcommand(actions, "show", "one model's versions (or one version) with tags and metrics")
    rs.add_argument("name")
    rs.add_argument("version", type=int, nargs="?")
    rp = subcommand(actions, "promote", "set an alias (e.g. production) if the version passes the gates")
    rp.add_argument("name")
    rp.add_argument("version", type=int)
    rp.add_argument("--alias", default="production")
    rp.add_argument(
        "--gates", default=None, metavar="GATES.yaml", help="min_task / max_kl / max_benchmark_drop / budget_met"
    )
    rp.add_argument("--min-task", action="append", default=[], metavar="METRIC=VALUE")
    rp.add_argument("--max-kl", type=float, default=None)
    rp.add_argument("--max-benchmark-drop", type=float, default=None)
    rp.add_argument("--budget-met", action="store_true", help="the run met its forgetting.budget")
    for sp in (rr, rl, rs, rp):
        sp.add_argument("--tracking-uri", default=None, help="MLflow URI (default: sqlite in runs/registry)")


def registry(args: argparse.Namespace) -> int:
    uri = args.tracking_uri
    if args.action == "register":
        r = api.register(Path(args.run), args.name, uri)
        print(f"[forgetless] registered {r['name']} version {r['version']} (MLflow run {r['run_id']}): {r['source']}")
    elif args.action in ("list", "show"):
        rows = api.versions(args.name, uri)
        if args.action == "show" and args.version is not None:
            rows = [r for r in rows if r["version"] == args.version]
            if not rows:
                raise UserError(f"registry: {args.name} has no version {args.version}")
        if args.action == "show":
            print(json.dumps(rows, indent=2))
        for r in rows if args.action == "list" else []:
            task = {k: round(v, 4) for k, v in r["metrics"].items() if k.startswith("task.") or "kl" in k}
            print(f"{r['name']} v{r['version']} {','.join(r['aliases']) or '-'} base={r['base_model']} {task}")
    elif args.action == "promote":
        tree = (read_yaml(Path(args.gates))[0] or {}) if args.gates else {}
        gates = pipeline_config.gates(tree, args.min_task, args.max_kl, args.max_benchmark_drop, args.budget_met)
        failed = api.promote(args.name, args.version, args.alias, gates, uri)
        if failed:
            print(f"[forgetless] refused: {args.name} v{args.version} fails {'; '.join(failed)}", file=sys.stderr)
            return 1
        print(f"[forgetless] {args.name} v{args.version} is now '{args.alias}'")
    return 0


def pipeline_parser(pp: argparse.ArgumentParser) -> None:
    pp.add_argument("file", metavar="PIPELINE.yaml", help="a pipeline YAML, or `pipeline` for the shipped example")


def pipeline(args: argparse.Namespace) -> int:
    # the pipeline is a sequence of api calls itself (pipeline.py), so it is the door here
    from forgetless import pipeline as stages  # torch & transformers: after parsing, as for every command

    shipped = api.CONFIGS / f"{args.file}.yaml"
    done = stages.run(shipped if not Path(args.file).is_file() and shipped.is_file() else Path(args.file))
    finished = ", ".join(f"{name} {entry['status']}" for name, entry in done.items())
    print(f"[forgetless] pipeline finished: {finished}")
    return 0
