"""Command line: `forgetless train | chat | env`. Parsing only; the work happens in recipes/ and api.py.

User mistakes (UserError) print one line and exit 2; --debug shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from forgetless.errors import UserError


def _train(args: argparse.Namespace) -> int:
    from forgetless import api, config

    if args.help_config:
        print(config.describe())
        return 0
    items = list(args.items)
    path = items.pop(0) if items and "=" not in items[0] else None
    cfg = api.load_config(path, items)
    print(f"[forgetless] config: {path or api.QUICKSTART}; output_dir: {cfg.output_dir}")
    summary = api.train(cfg, resume=args.resume, overwrite=args.overwrite)
    print_summary(summary)
    return 0


def print_summary(s: dict) -> None:
    print(
        f"\n[forgetless] trained {s['steps']} steps in {s['train_seconds']:.0f} s "
        f"({s['tokens_per_s']:.0f} tokens/s, effective batch {s['effective_batch']}); "
        f"wall time {s['wall_seconds']:.0f} s"
    )
    for note in s.get("data_notes", []):
        print(f"[forgetless] data: {note}")
    before, after = s.get("task_before"), s.get("task_after")
    if before and after:
        print(f"\n{'held-out task score':<22}{'before':>10}{'after':>10}")
        for key in ("exact_match", "rouge_l"):
            print(f"{key:<22}{before[key]:>10.3f}{after[key]:>10.3f}")
        for i, (b, a) in enumerate(zip(before["samples"], after["samples"], strict=False), start=1):
            print(f"\n--- sample {i}: {b['prompt'][:300]}")
            print(f"expected : {b['reference']}")
            print(f"before   : {b['answer'][:300]}")
            print(f"after    : {a['answer'][:300]}")


def _chat(args: argparse.Namespace) -> int:
    from forgetless.chat import Chat

    session = Chat(args.model, args.adapter, args.system, args.max_new_tokens, args.quantization)
    if args.prompt is not None:
        print(session.answer(args.prompt))
        return 0
    session.interactive()
    return 0


def _env(args: argparse.Namespace) -> int:
    from forgetless import hardware

    print(json.dumps(hardware.summary(), indent=2))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forgetless", description="Fine-tune LLMs without catastrophic forgetting.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors too")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train from a YAML config (default: configs/quickstart.yaml)")
    t.add_argument("items", nargs="*", metavar="[CONFIG] KEY=VALUE", help="config file, then dotted overrides")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run in output_dir")
    t.add_argument("--help-config", action="store_true", help="list every config key with default and help")
    t.set_defaults(func=_train)

    c = sub.add_parser("chat", help="answer a prompt (or chat) with a model and optional adapters")
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
    c.set_defaults(func=_chat)

    e = sub.add_parser("env", help="print the hardware forgetless sees")
    e.set_defaults(func=_env)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from forgetless.hardware import quiet_third_party_logs

    quiet_third_party_logs()
    if not args.debug:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    try:
        return args.func(args)
    except UserError as e:
        if args.debug:
            raise
        print(f"forgetless: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nforgetless: interrupted; resume with --resume", file=sys.stderr)
        return 130
