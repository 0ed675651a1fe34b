"""The subcommands around training: plan, env, data (check, dedup, decontaminate, augment), ui.

Each has a parser builder (`*_parser`) and a handler; the handler asks api.py for the work and prints
what the terminal shows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from forgetless import api, files
from forgetless.commands.arguments import gigabytes, subcommand
from forgetless.config import loader
from forgetless.data import augment
from forgetless.errors import UserError


def plan_parser(pl: argparse.ArgumentParser) -> None:
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
    pl.add_argument("--budget-kl", type=float, default=None, help="forgetting budget: KL to the base per token")
    pl.add_argument("--write", default=None, metavar="CFG.yaml", help="write a ready config for the plan")


def plan(args: argparse.Namespace) -> int:
    p = api.plan(
        args.model,
        gigabytes(args.gpu_memory) if args.gpu_memory else None,
        not args.no_bf16,
        goal=args.goal,
        need=args.need,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        short_deadline=args.short_deadline,
        processes=args.processes,
        sharding=args.sharding,
        budget_kl=args.budget_kl,
    )
    print(api.render_plan(p))
    if args.write:
        cfg = api.load_config("quickstart-long", p.overrides())  # lr 1e-3 cosine: not the demo's hotter 5 minutes
        loader.dump(cfg, Path(args.write))
        print(f"\n[forgetless] config written to {args.write}; train it with: forgetless train {args.write}")
    return 0 if p.fits else 1


def env_parser(e: argparse.ArgumentParser) -> None:
    e.add_argument("--configs", action="store_true", help="print the folder of the shipped configs instead")


def env(args: argparse.Namespace) -> int:
    print(api.CONFIGS if args.configs else json.dumps(api.hardware(), indent=2))
    return 0


def data_parser(d: argparse.ArgumentParser) -> None:
    actions = d.add_subparsers(dest="action", required=True)
    c = subcommand(actions, "check", "rows, errors, lengths, languages, duplicates, leakage")
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
        x = subcommand(actions, name, what + "; removed rows are logged beside --out")
        x.add_argument("file", metavar="FILE")
        if name == "decontaminate":
            x.add_argument("--against", nargs="+", required=True, metavar="EVAL_FILE")
        x.add_argument("--out", required=True, metavar="OUT.jsonl")
        x.add_argument("--near", type=float, default=0.85, help="character 5-gram Jaccard of a near duplicate")
    a = subcommand(actions, "augment", "new rows by paraphrase, back-translation or synonyms")
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


def data(args: argparse.Namespace) -> int:
    if args.action == "augment":
        settings = augment.Settings(
            args.method, args.n, args.model, args.seed, args.answers, args.rate, args.max_drift, args.language
        )
        stats = api.augment(args.file, Path(args.out), settings)
        print(
            f"[forgetless] augment ({args.method}): {stats['rows']} row(s) -> {stats['written']} new of "
            f"{stats['candidates']} candidates, rejected {stats['rejected'] or 'none'} -> {args.out} "
            f"(counts: {Path(args.out).with_suffix('.augment.json')})"
        )
        return 0
    if not 0 < args.near <= 1:
        raise UserError(f"--near {args.near}: give a Jaccard similarity in (0, 1], e.g. 0.85")
    if args.action == "check":
        result, text = api.check_data(args.files, args.against, args.near, args.model, args.max_length)
        print(text)
        if args.json:
            files.write_json(Path(args.json), result)
        if args.strict and result["warnings"]:
            raise UserError(
                f"data check --strict: {len(result['warnings'])} warning(s); first: {result['warnings'][0]}"
            )
        return 0
    if args.action == "dedup":
        kept, removed = api.dedup(args.file, Path(args.out), args.near)
    else:
        kept, removed = api.decontaminate(args.file, args.against, Path(args.out), args.near)
    log = Path(args.out).with_suffix(".removed.jsonl")
    print(f"[forgetless] {args.action}: kept {kept} row(s), removed {removed} -> {args.out} (why: {log})")
    return 0


def ui_parser(u: argparse.ArgumentParser) -> None:
    u.add_argument("--runs", default="runs", help="the folder whose runs the UI shows and where it starts new ones")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=7860)
    u.add_argument("--api-key", default=None, help="password the browser must give (required off loopback)")


def ui(args: argparse.Namespace) -> int:
    # the UI is a front door like this CLI (it calls api.py itself), so the handler starts it directly
    try:
        from forgetless.ui import app  # Gradio: an optional extra, imported only for this command
    except ImportError as e:
        raise UserError(f"forgetless ui needs Gradio: pip install 'forgetless[ui]' ({e})") from None
    app.launch(args.runs, args.host, args.port, args.api_key)
    return 0
