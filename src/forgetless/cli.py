"""Command line: `forgetless train | eval | report | compare | rehearsal generate | chat | merge | serve |
registry | pipeline | plan | env`.

Parsing only; the work happens in recipes/ and api.py.

User mistakes (UserError) print one line and exit 2; --debug shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

from forgetless.errors import UserError


def _train(args: argparse.Namespace) -> int:
    from forgetless import api, config

    if args.help_config:
        print(config.describe())
        return 0
    if args.launch:
        return _launch(args)
    path, items = _config_and_overrides(args.items)
    items = ([f"recipe={args.recipe}"] if args.recipe else []) + items
    cfg = api.load_config(path, items)
    if args.auto:
        cfg = api.load_config(path, _auto_overrides(cfg) + items)  # the user's own overrides still win
    if os.environ.get("RANK", "0") == "0":  # once, not per launched process
        print(f"[forgetless] config: {path or api.QUICKSTART}; output_dir: {cfg.output_dir}")
    summary = api.train(cfg, resume=args.resume, overwrite=args.overwrite)
    if "output_dir" in summary:  # under a launcher, only the main process has the full summary
        print_summary(summary)
    return 0


def _auto_overrides(cfg) -> list[str]:
    """Plan for the detected hardware, starting from the config's model, length and batch."""
    from forgetless import planner

    p = planner.plan_for(cfg)
    print(planner.render(p) + "\n")
    if not p.fits:
        raise UserError("--auto: no setting fits this hardware (see the plan above)")
    keep = ("recipe=", "rlhf.", "model.name=", "peft.method=", "forgetting.preset=")  # the config's own choices stay
    return [o for o in p.overrides() if not o.startswith(keep)]


def launch_command(processes: int, argv: list[str]) -> list[str]:
    """`accelerate launch` with `processes` local processes running `forgetless train ARGV`.

    accelerate's multi-process launcher (`--multi_gpu`) also serves CPU-only machines: each process
    then trains on the CPU and they talk over gloo. The port is chosen free so that two runs can coexist.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1"]
    options = ["--num_processes", str(processes), "--main_process_port", str(port), "--mixed_precision", "no"]
    return [*launcher, *options, "--dynamo_backend", "no", "-m", "forgetless", "train", *argv]


def _launch(args: argparse.Namespace) -> int:
    if args.launch < 1:
        raise UserError(f"--launch {args.launch}: give the number of local processes (1 or more)")
    argv = (
        [*args.items]
        + ([f"recipe={args.recipe}"] if args.recipe else [])
        + (["--resume"] if args.resume else [])
        + (["--overwrite"] if args.overwrite else [])
    )
    cmd = launch_command(args.launch, argv)
    print(f"[forgetless] launching {args.launch} processes: {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd)


def print_summary(s: dict) -> None:
    from forgetless.eval.report import print_tables

    print(
        f"\n[forgetless] trained {s['steps']} steps in {s['train_seconds']:.0f} s "
        f"({s['tokens_per_s']:.0f} tokens/s, effective batch {s['effective_batch']}); "
        f"wall time {s['wall_seconds']:.0f} s"
        + (f"; stopped early ({s['stopped_early']})" if s.get("stopped_early") else "")
    )
    for note in s.get("data_notes", []):
        print(f"[forgetless] data: {note}")
    ev_path = Path(s["output_dir"]) / "eval.json"
    if not ev_path.exists():
        return
    ev = json.loads(ev_path.read_text(encoding="utf-8"))
    print_tables(ev)
    for i, smp in enumerate(ev.get("task", {}).get("samples", []), start=1):
        print(f"\n--- sample {i}: {smp['prompt'][:300]}")
        print(f"expected : {smp['reference']}")
        print(f"before   : {smp['answer_base'][:300]}")
        print(f"after    : {smp['answer'][:300]}")
    if (Path(s["output_dir"]) / "report.html").exists():
        print(f"\n[forgetless] report: {s['output_dir']}/report.md and report.html")


def _eval(args: argparse.Namespace) -> int:
    from forgetless import api
    from forgetless.eval.report import print_tables
    from forgetless.recipes import evaluate

    path, items = _config_and_overrides(args.items)
    adapter, out = args.adapter, args.out
    if args.run:
        run = Path(args.run)
        if not (run / "config.yaml").is_file():
            raise UserError(f"{run} is not a run directory (no config.yaml); give --adapter DIR instead")
        path = path or str(run / "config.yaml")
        adapter = adapter or str(run / "adapter")
        out = out or str(run / "eval")
    cfg = api.load_config(path, items)
    result = evaluate.run(cfg, adapter, args.base, Path(out or "runs/eval"))
    print_tables(result)
    print(f"\n[forgetless] eval.json and report written to {out or 'runs/eval'}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from forgetless.eval import report

    runs = [Path(r) for r in args.runs]
    for r in runs:
        if not (r / "summary.json").is_file() and not (r / "eval.json").is_file():
            raise UserError(f"{r} has no summary.json or eval.json; is it a forgetless run directory?")
    out = Path(args.out) if args.out else (runs[0] if len(runs) == 1 else Path("runs/report"))
    md, page = report.write(runs, out)
    print(f"[forgetless] report: {md} and {page}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from forgetless import api
    from forgetless.recipes import compare

    path, items = _config_and_overrides(args.items)
    cfg = api.load_config(path, items)
    variants = compare.preset_variants([v.strip() for v in args.variants.split(",") if v.strip()])
    rows = compare.run(cfg, variants, overwrite=args.overwrite)
    print(f"\n{compare.table(rows, cfg.eval.metric)}\n\n[forgetless] table written to {cfg.output_dir}/compare.md")
    return 0


def _rehearsal(args: argparse.Namespace) -> int:
    """Generate (or find) the base model's answers that training would otherwise generate on first use."""
    from forgetless import api, generated, hardware, rehearsal
    from forgetless import model as models

    path, items = _config_and_overrides(args.items)
    cfg = api.load_config(path, items)
    dev = hardware.device()
    dtype = str(hardware.resolve_dtype(cfg.model.precision, dev))
    model, tokenizer, model_path = models.load(cfg.model, dev)
    out = Path(args.out) if args.out else None
    made, found = rehearsal.self_rehearsal_file(cfg, model, tokenizer, model_path, dtype, out_dir=out, force=args.force)
    print(f"[forgetless] self-rehearsal data ({'generated' if found else 'cached'}): {made}")
    e = cfg.eval
    made, found = generated.ensure(
        "retention",
        model,
        tokenizer,
        cfg.model,
        model_path,
        dtype,
        e.retention_prompts,
        e.retention_max_new_tokens,
        out_dir=out,
        force=args.force,
    )
    print(f"[forgetless] retention reference answers ({'generated' if found else 'cached'}): {made}")
    return 0


def _config_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    items = list(items)
    path = items.pop(0) if items and "=" not in items[0] else None
    return path, items


def _chat(args: argparse.Namespace) -> int:
    from forgetless.chat import Chat

    session = Chat(args.model, args.adapter, args.system, args.max_new_tokens, args.quantization)
    if args.prompt is not None:
        print(session.answer(args.prompt))
        return 0
    session.interactive()
    return 0


def _reward_score(args: argparse.Namespace) -> int:
    from forgetless.recipes import reward

    if bool(args.file) == bool(args.prompt):
        raise UserError("reward score: give --prompt P --answer A (repeat --answer to compare), or --file F.jsonl")
    if args.file:
        rows = reward.score_file(args.run, Path(args.file))
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        if args.out:
            Path(args.out).write_text(text, encoding="utf-8")
            print(f"[forgetless] scored {len(rows)} rows -> {args.out}")
        else:
            print(text, end="")
        return 0
    if not args.answer:
        raise UserError("reward score: --prompt needs at least one --answer")
    model, tokenizer = reward.load_reward_model(args.run)
    prompt = [{"role": "user", "content": args.prompt}]
    for answer, value in zip(
        args.answer, reward.score(model, tokenizer, [(prompt, a) for a in args.answer]), strict=True
    ):
        print(f"{value:+.4f}  {answer}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from forgetless.merge import merge

    facts = merge(args.adapter, Path(args.out), args.base, args.precision)
    print(
        f"[forgetless] merged the {facts['adapter_type']} adapter {facts['adapter']} into {facts['merged_into']} "
        f"({facts['base_model']}, {facts['dtype']}); saved to {args.out} "
        "(loads with AutoModelForCausalLM.from_pretrained)"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from forgetless import serve

    adapters = {}
    for i, item in enumerate(args.adapter):
        name, sep, ref = item.partition("=")
        adapters[name if sep else f"adapter{i + 1}"] = ref if sep else item
    serve.run(args.model, adapters, args.host, args.port, args.api_key, args.max_tokens, args.max_prompt_tokens)
    return 0


def _gates(args: argparse.Namespace):
    from forgetless.registry import Gates

    tree: dict = {}
    if args.gates:
        import yaml

        tree = yaml.safe_load(Path(args.gates).read_text(encoding="utf-8")) or {}
    for item in args.min_task:
        name, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--min-task {item}: write METRIC=VALUE, e.g. exact_match=0.6")
        tree.setdefault("min_task", {})[name] = float(value)
    if args.max_kl is not None:
        tree["max_kl"] = args.max_kl
    if args.max_benchmark_drop is not None:
        tree["max_benchmark_drop"] = args.max_benchmark_drop
    try:
        return Gates(**tree)
    except Exception as e:  # pydantic's message names the key
        raise UserError(f"gates: {str(e).splitlines()[0]} ({' '.join(str(e).split())[:200]})") from None


def _registry(args: argparse.Namespace) -> int:
    from forgetless import registry

    uri = args.tracking_uri
    if args.action == "register":
        r = registry.register(Path(args.run), args.name, uri)
        print(f"[forgetless] registered {r['name']} version {r['version']} (MLflow run {r['run_id']}): {r['source']}")
    elif args.action in ("list", "show"):
        rows = registry.versions(args.name, uri)
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
        failed = registry.promote(args.name, args.version, args.alias, _gates(args), uri)
        if failed:
            print(f"[forgetless] refused: {args.name} v{args.version} fails {'; '.join(failed)}", file=sys.stderr)
            return 1
        print(f"[forgetless] {args.name} v{args.version} is now '{args.alias}'")
    return 0


def _pipeline(args: argparse.Namespace) -> int:
    from forgetless import pipeline

    stages = pipeline.run(Path(args.file))
    done = ", ".join(f"{name} {entry['status']}" for name, entry in stages.items())
    print(f"[forgetless] pipeline finished: {done}")
    return 0


def _parse_gb(text: str) -> float:
    try:
        return float(text.strip().upper().removesuffix("GB").removesuffix("G"))
    except ValueError:
        raise UserError(f"--gpu-memory {text}: give a size such as 8GB or 24") from None


def _plan(args: argparse.Namespace) -> int:
    from forgetless import api, config, planner

    hw = planner.given(_parse_gb(args.gpu_memory), not args.no_bf16) if args.gpu_memory else planner.detect()
    p = planner.plan(
        args.model,
        hw,
        goal=args.goal,
        need=args.need,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        short_deadline=args.short_deadline,
        processes=args.processes,
        sharding=args.sharding,
    )
    print(planner.render(p))
    if args.write:
        cfg = api.load_config(None, p.overrides())
        config.dump(cfg, Path(args.write))
        print(f"\n[forgetless] config written to {args.write}; train it with: forgetless train {args.write}")
    return 0 if p.fits else 1


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
    t.add_argument("--auto", action="store_true", help="let the planner pick precision, 4-bit and batch settings")
    t.add_argument("--recipe", choices=["sft", "dpo", "reward", "rlhf"], help="shorthand for the override recipe=NAME")
    t.add_argument(
        "--launch",
        type=int,
        default=0,
        metavar="N",
        help="start N local processes with accelerate (data parallel; CPU processes use gloo)",
    )
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

    v = sub.add_parser("eval", help="score a base model, base + adapter, or a merged model; writes eval.json")
    v.add_argument("items", nargs="*", metavar="[CONFIG] KEY=VALUE", help="config file, then dotted overrides")
    v.add_argument("--run", default=None, help="a run directory: its config, adapter and held-out data")
    v.add_argument("--adapter", default=None, help="adapter directory to evaluate on top of model.name")
    v.add_argument("--base", default=None, help="base model to compare a merged model with")
    v.add_argument("--out", default=None, help="output folder (default RUN/eval, else runs/eval)")
    v.set_defaults(func=_eval)

    o = sub.add_parser("report", help="report.md + report.html for one run or several side by side")
    o.add_argument("runs", nargs="+", metavar="RUN_DIR")
    o.add_argument("--out", default=None, help="output folder (default: the run itself, or runs/report)")
    o.set_defaults(func=_report)

    m = sub.add_parser("compare", help="train forgetting presets side by side and tabulate gain vs retention")
    m.add_argument("items", nargs="*", metavar="[CONFIG] KEY=VALUE", help="config file, then dotted overrides")
    m.add_argument("--variants", default="none,lwf,rehearsal,full", help="comma-separated forgetting presets")
    m.add_argument("--overwrite", action="store_true", help="retrain variants whose run directories hold other runs")
    m.set_defaults(func=_compare)

    r = sub.add_parser("rehearsal", help="self-rehearsal data: the base model's answers to general prompts")
    rsub = r.add_subparsers(dest="action", required=True)
    g = rsub.add_parser("generate", help="generate and cache them now (training does it on first use otherwise)")
    g.add_argument("items", nargs="*", metavar="[CONFIG] KEY=VALUE", help="config file, then dotted overrides")
    g.add_argument("--out", default=None, help="write into this folder instead of the cache")
    g.add_argument("--force", action="store_true", help="generate even when a cached file exists")
    g.set_defaults(func=_rehearsal)

    mg = sub.add_parser("merge", help="fold a LoRA/DoRA/IA3 adapter into its base; save a plain transformers model")
    mg.add_argument("adapter", metavar="RUN_DIR|ADAPTER_DIR")
    mg.add_argument("--out", required=True, help="new directory for the merged model")
    mg.add_argument("--base", default=None, help="base model (default: the run's model.name)")
    mg.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    mg.set_defaults(func=_merge)

    sv = sub.add_parser("serve", help="OpenAI-compatible HTTP server: one base model, several named adapters")
    sv.add_argument("--model", default=None, help="base model (default: the first adapter's base)")
    sv.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR", help="repeat for several")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--api-key", default=None, help="required Bearer key (or FORGETLESS_API_KEY)")
    sv.add_argument("--max-tokens", type=int, default=512, help="largest max_tokens a request may ask for")
    sv.add_argument("--max-prompt-tokens", type=int, default=2048, help="longest prompt accepted")
    sv.set_defaults(func=_serve)

    rw = sub.add_parser("reward", help="use a reward model trained with recipe=reward")
    rwsub = rw.add_subparsers(dest="action", required=True)
    rws = rwsub.add_parser("score", help="score answers to a prompt, or every row of a JSONL file")
    rws.add_argument("--run", required=True, help="the reward run directory (or its adapter directory)")
    rws.add_argument("--prompt", default=None)
    rws.add_argument("--answer", action="append", default=[], help="an answer to score; repeat to compare")
    rws.add_argument("--file", default=None, help="{prompt, answer} or {prompt, chosen, rejected} rows")
    rws.add_argument("--out", default=None, help="write the scored rows here (default: stdout)")
    rws.set_defaults(func=_reward_score)

    rg = sub.add_parser("registry", help="MLflow model registry: register, list, show, promote with gates")
    rsub2 = rg.add_subparsers(dest="action", required=True)
    rr = rsub2.add_parser("register", help="record a run's adapter with lineage and metrics")
    rr.add_argument("run", metavar="RUN_DIR")
    rr.add_argument("--name", required=True)
    rl = rsub2.add_parser("list", help="registered models and versions")
    rl.add_argument("--name", default=None)
    rs = rsub2.add_parser("show", help="one model's versions (or one version) with tags and metrics")
    rs.add_argument("name")
    rs.add_argument("version", type=int, nargs="?")
    rp = rsub2.add_parser("promote", help="set an alias (e.g. production) if the version passes the gates")
    rp.add_argument("name")
    rp.add_argument("version", type=int)
    rp.add_argument("--alias", default="production")
    rp.add_argument("--gates", default=None, metavar="GATES.yaml", help="min_task / max_kl / max_benchmark_drop")
    rp.add_argument("--min-task", action="append", default=[], metavar="METRIC=VALUE")
    rp.add_argument("--max-kl", type=float, default=None)
    rp.add_argument("--max-benchmark-drop", type=float, default=None)
    for sp in (rr, rl, rs, rp):
        sp.add_argument("--tracking-uri", default=None, help="MLflow URI (default: sqlite in runs/registry)")
    rg.set_defaults(func=_registry)

    pp = sub.add_parser("pipeline", help="data check -> train -> evaluate -> register -> promote -> serve")
    pp.add_argument("file", metavar="PIPELINE.yaml")
    pp.set_defaults(func=_pipeline)

    pl = sub.add_parser("plan", help="pick method, precision and batch settings that fit the hardware and goal")
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
    pl.set_defaults(func=_plan)

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
