"""What each `forgetless` subcommand does, once cli.py has parsed its arguments: one small function
per subcommand (COMMANDS maps the names). The work itself happens in api.py, the recipes and the
components; this module turns their results into what the terminal shows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from forgetless import api, files, pipeline
from forgetless.adapters.merge import merge
from forgetless.config import loader
from forgetless.config import pipeline as pipeline_config
from forgetless.data import augment, check
from forgetless.deploy import export, registry, serve
from forgetless.deploy.chat import Chat
from forgetless.errors import UserError
from forgetless.eval import report
from forgetless.eval.report import print_tables
from forgetless.files import read_yaml
from forgetless.model import chat_format, hardware
from forgetless.model import loader as models
from forgetless.objectives import reward_model
from forgetless.plan import planner
from forgetless.recipes import compare, evaluate, tune_scale
from forgetless.reference import answers, paraphrase, rehearsal
from forgetless.training import distributed
from forgetless.training.monitor import UNCHANGED


def cmd_train(args: argparse.Namespace) -> int:
    if args.help_config:
        print(loader.describe())
        return 0
    if args.launch is not None:  # --launch 0 is refused there, not taken for "no launcher"
        return launch(args)
    path, items = _config_and_overrides(args.items)
    items = ([f"recipe={args.recipe}"] if args.recipe else []) + items
    items = ([f"model.continue_from={args.continue_from}"] if args.continue_from else []) + items
    cfg = api.load_config(path, items)
    if args.auto:
        cfg = api.load_config(path, _auto_overrides(cfg) + items)  # the user's own overrides still win
    if distributed.is_main():  # once, not per launched process
        print(f"[forgetless] config: {api.config_path(path)}; output_dir: {cfg.output_dir}")
    summary = api.train(cfg, resume=args.resume, overwrite=args.overwrite)
    if "output_dir" in summary:  # under a launcher, only the main process has the full summary
        print_summary(summary)
    return 0


def _auto_overrides(cfg) -> list[str]:
    """Plan for the detected hardware, starting from the config's model, length and batch."""
    p = planner.plan_for(cfg)
    if distributed.is_main():
        print(planner.render(p) + "\n")
    if not p.fits:
        raise UserError("--auto: no setting fits this hardware (see the plan above)")
    keep = ("recipe=", "rlhf.", "model.name=", "peft.method=", "forgetting.preset=")  # the config's own choices stay
    return [o for o in p.overrides() if not o.startswith(keep)]


def launch(args: argparse.Namespace) -> int:
    if args.launch < 1:
        raise UserError(f"--launch {args.launch}: give the number of local processes (1 or more)")
    cmd = distributed.launch_command(args.launch, distributed.without_launch(args.argv))
    print(f"[forgetless] launching {args.launch} processes: {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd)


def print_summary(s: dict) -> None:
    print(
        f"\n[forgetless] trained {s['steps']} steps in {s['train_seconds']:.0f} s "
        f"({s['tokens_per_s']:.0f} tokens/s, effective batch {s['effective_batch']}); "
        f"wall time {s['wall_seconds']:.0f} s"
        + (f"; stopped early ({s['stopped_early']})" if s.get("stopped_early") else "")
    )
    for note in s.get("data_notes", []):
        print(f"[forgetless] data: {note}")
    if s.get("adapter_unchanged"):
        print(f"[forgetless] warning: {UNCHANGED}")
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


def cmd_eval(args: argparse.Namespace) -> int:
    path, items = _config_and_overrides(args.items)
    adapter, out = args.adapter, args.out
    if args.run:
        run = _run_dir(args.run, "; give --adapter DIR instead")
        path = path or str(run / "config.yaml")
        adapter = adapter or str(run / "adapter")
        out = out or str(run / "eval")
    cfg = api.load_config(path, items)
    result = evaluate.run(cfg, adapter, args.base, Path(out or "runs/eval"))
    print_tables(result)
    print(f"\n[forgetless] eval.json and report written to {out or 'runs/eval'}")
    return 0


def _run_dir(ref: str, advice: str = "") -> Path:
    if not (Path(ref) / "config.yaml").is_file():
        raise UserError(f"{ref} is not a run directory (no config.yaml){advice}")
    return Path(ref)


def cmd_tune_scale(args: argparse.Namespace) -> int:
    run = _run_dir(args.run)
    t = tune_scale.run(
        api.load_config(str(run / "config.yaml"), args.items), run, args.max_kl, args.min_task, args.grid
    )
    print(
        f"[forgetless] tune-scale: scale {t['chosen']:g} saved with {run / 'adapter'}; curve in {run / 'report.html'}"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    runs = [Path(r) for r in args.runs]
    for r in runs:
        if not (r / "summary.json").is_file() and not (r / "eval.json").is_file():
            raise UserError(f"{r} has no summary.json or eval.json; is it a forgetless run directory?")
    out = Path(args.out) if args.out else (runs[0] if len(runs) == 1 else Path("runs/report"))
    md, page = report.write(runs, out)
    print(f"[forgetless] report: {md} and {page}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    path, items = _config_and_overrides(args.items)
    cfg = api.load_config(path, items)
    variants = compare.preset_variants([v.strip() for v in args.variants.split(",") if v.strip()])
    rows = api.compare_presets(cfg, variants, overwrite=args.overwrite)
    print(f"\n{compare.table(rows, cfg.eval.metric)}\n\n[forgetless] table written to {cfg.output_dir}/compare.md")
    return 0


def cmd_rehearsal(args: argparse.Namespace) -> int:
    """Generate (or find) the base model's answers that training would otherwise generate on first use."""

    path, items = _config_and_overrides(args.items)
    cfg = api.load_config(path, items)
    dev = hardware.device()
    dtype = str(hardware.resolve_dtype(cfg.model.precision, dev))
    model, tokenizer, model_path = models.load(cfg.model, dev)
    chat_format.apply_template(tokenizer, cfg.data.chat_template)  # the answers are generated as training renders them
    out = Path(args.out) if args.out else None
    made, found = rehearsal.self_rehearsal_file(cfg, model, tokenizer, model_path, dtype, out_dir=out, force=args.force)
    print(f"[forgetless] self-rehearsal data ({'generated' if found else 'cached'}): {made}")
    e = cfg.eval
    made, found = answers.ensure(
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
        template=cfg.data.chat_template,
    )
    print(f"[forgetless] retention reference answers ({'generated' if found else 'cached'}): {made}")
    return 0


def _config_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    items = list(items)
    path = items.pop(0) if items and "=" not in items[0] else None
    return path, items


def cmd_chat(args: argparse.Namespace) -> int:
    session = Chat(args.model, args.adapter, args.system, args.max_new_tokens, args.quantization)
    if args.prompt is not None:
        print(session.answer(args.prompt))
        return 0
    session.interactive()
    return 0


def cmd_reward(args: argparse.Namespace) -> int:
    if bool(args.file) == bool(args.prompt):
        raise UserError("reward score: give --prompt P --answer A (repeat --answer to compare), or --file F.jsonl")
    if args.file:
        rows = reward_model.score_file(args.run, Path(args.file))
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        if args.out:
            files.write_text(Path(args.out), text)
            print(f"[forgetless] scored {len(rows)} rows -> {args.out}")
        else:
            print(text, end="")
        return 0
    if not args.answer:
        raise UserError("reward score: --prompt needs at least one --answer")
    model, tokenizer = reward_model.load_reward_model(args.run)
    prompt = [{"role": "user", "content": args.prompt}]
    for answer, value in zip(
        args.answer, reward_model.score(model, tokenizer, [(prompt, a) for a in args.answer]), strict=True
    ):
        print(f"{value:+.4f}  {answer}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    facts = merge(args.adapter, Path(args.out), args.base, args.precision)
    print(
        f"[forgetless] merged the {facts['adapter_type']} adapter {facts['adapter']} into {facts['merged_into']} "
        f"({facts['base_model']}, {facts['dtype']}); saved to {args.out} "
        "(loads with AutoModelForCausalLM.from_pretrained)"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    record = export.run(args.adapter, args.format, Path(args.out), args.quant, args.base)
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


def cmd_serve(args: argparse.Namespace) -> int:
    adapters, settings = serve.named_adapters(args.adapter), {k: getattr(args, k) for k in serve.ENGINE_FLAGS}
    serve.run(
        args.model, adapters, args.host, args.port, args.api_key, args.max_tokens, args.max_prompt_tokens, **settings
    )
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    try:
        from forgetless.ui import app  # Gradio: an optional extra, imported only for this command
    except ImportError as e:
        raise UserError(f"forgetless ui needs Gradio: pip install 'forgetless[ui]' ({e})") from None
    app.launch(args.runs, args.host, args.port, args.api_key)
    return 0


def _gates(args: argparse.Namespace):
    tree = (read_yaml(Path(args.gates))[0] or {}) if args.gates else {}
    return pipeline_config.gates(tree, args.min_task, args.max_kl, args.max_benchmark_drop)


def cmd_registry(args: argparse.Namespace) -> int:
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


def cmd_pipeline(args: argparse.Namespace) -> int:
    shipped = api.CONFIGS / f"{args.file}.yaml"
    stages = pipeline.run(shipped if not Path(args.file).is_file() and shipped.is_file() else Path(args.file))
    done = ", ".join(f"{name} {entry['status']}" for name, entry in stages.items())
    print(f"[forgetless] pipeline finished: {done}")
    return 0


def _parse_gb(text: str) -> float:
    try:
        return float(text.strip().upper().removesuffix("GB").removesuffix("G"))
    except ValueError:
        raise UserError(f"--gpu-memory {text}: give a size such as 8GB or 24") from None


def cmd_plan(args: argparse.Namespace) -> int:
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
        cfg = api.load_config("quickstart-long", p.overrides())  # lr 1e-3 cosine: not the demo's hotter 5 minutes
        loader.dump(cfg, Path(args.write))
        print(f"\n[forgetless] config written to {args.write}; train it with: forgetless train {args.write}")
    return 0 if p.fits else 1


def cmd_env(args: argparse.Namespace) -> int:
    print(api.CONFIGS if args.configs else json.dumps(hardware.summary(), indent=2))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.action == "augment":
        settings = augment.Settings(
            args.method, args.n, args.model, args.seed, args.answers, args.rate, args.max_drift, args.language
        )
        stats = paraphrase.augment_file(args.file, Path(args.out), settings)
        print(
            f"[forgetless] augment ({args.method}): {stats['rows']} row(s) -> {stats['written']} new of "
            f"{stats['candidates']} candidates, rejected {stats['rejected'] or 'none'} -> {args.out} "
            f"(counts: {Path(args.out).with_suffix('.augment.json')})"
        )
        return 0
    if not 0 < args.near <= 1:
        raise UserError(f"--near {args.near}: give a Jaccard similarity in (0, 1], e.g. 0.85")
    if args.action == "dedup":
        kept, removed = check.dedup(args.file, Path(args.out), args.near)
    elif args.action == "decontaminate":
        kept, removed = check.decontaminate(args.file, args.against, Path(args.out), args.near)
    else:
        tokenizer = models.load_tokenizer(models.resolve(args.model))
        result = check.check(args.files, args.against, args.near, tokenizer, args.max_length)
        print(check.render(result))
        if args.json:
            files.write_json(Path(args.json), result)
        if args.strict and result["warnings"]:
            raise UserError(
                f"data check --strict: {len(result['warnings'])} warning(s); first: {result['warnings'][0]}"
            )
        return 0
    log = Path(args.out).with_suffix(".removed.jsonl")
    print(f"[forgetless] {args.action}: kept {kept} row(s), removed {removed} -> {args.out} (why: {log})")
    return 0


# subcommand name (cli.py's parsers) -> handler
COMMANDS = {
    "train": cmd_train,
    "chat": cmd_chat,
    "eval": cmd_eval,
    "report": cmd_report,
    "compare": cmd_compare,
    "rehearsal": cmd_rehearsal,
    "merge": cmd_merge,
    "export": cmd_export,
    "serve": cmd_serve,
    "reward": cmd_reward,
    "registry": cmd_registry,
    "pipeline": cmd_pipeline,
    "plan": cmd_plan,
    "env": cmd_env,
    "data": cmd_data,
    "ui": cmd_ui,
    "tune-scale": cmd_tune_scale,
}
