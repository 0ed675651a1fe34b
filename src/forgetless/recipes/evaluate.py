"""`forgetless eval`: score a base model, a base model plus an adapter, or a merged model.

With an adapter (or a run directory, whose config and adapter it reads) both sides are
measured exactly as at the end of training: the base model, then base + adapter, with the
retention suite against the same base-model references; so a separate eval of a run gives the
numbers the run reported (the base side is the one the run stored, eval/base_cache.py, when the
model, rows and settings are the same). A merged model needs `--base` to be compared with; without either,
only the model itself is scored.
"""

from __future__ import annotations

from pathlib import Path

from forgetless import files
from forgetless.adapters import continued, saved
from forgetless.adapters.saved import adapter_dir
from forgetless.config import loader
from forgetless.config.schema import Config
from forgetless.data.build import held_out
from forgetless.eval import base_cache, report, suite
from forgetless.model import chat_format, hardware
from forgetless.model import loader as models


def run(cfg: Config, adapter: str | None, base_ref: str | None, out: Path) -> dict:
    dev = hardware.device()
    dtype = hardware.resolve_dtype(cfg.model.precision, dev)
    if not (adapter and cfg.model.continue_from):
        cfg = continued.on_original_base(cfg)
    model, tokenizer, model_path = models.load(cfg.model, dev)
    if cfg.model.continue_from:  # a continued run: its base side is the earlier run's model, as in training
        model = continued.load_previous(model, continued.adapter_of(cfg))
    chat_format.apply_template(tokenizer, cfg.data.chat_template)
    if adapter:  # rendered as the adapter was trained, for the base side too: one prompt format for both
        saved.use_adapter_templates(tokenizer, [adapter_dir(adapter)])
    data = held_out(cfg.data, tokenizer, cfg.train.seed)
    examples, rows = data.validation_examples, data.validation
    print(f"[forgetless] eval: {len(examples)} held-out rows")
    if adapter is None and base_ref is None:
        result = suite.combine({}, suite.measure(model, tokenizer, cfg, examples, rows))
    else:
        base_cfg, base, base_path = cfg, model, model_path
        if base_ref is not None:  # a merged model: the base is a second model in memory
            base_cfg = loader.validate(cfg.model_dump(mode="json"), [f"model.name={base_ref}"])
            base, _, base_path = models.load(base_cfg.model, dev)
        refs = suite.references(base_cfg, base, tokenizer, base_path, dtype)
        # the base side as the run (or any earlier eval of this base on these rows) stored it
        key = base_cache.key(base_cfg, base_path, str(dtype), dev.type, examples, rows)
        name = base_cache.file_name(base_cfg, key)
        found = base_cache.lookup(name)
        print(
            f"[forgetless] base model scores: reused {found}" if found else "[forgetless] evaluating the base model ..."
        )
        before, _ = base_cache.reuse(name, lambda: suite.measure(base, tokenizer, cfg, examples, rows))
        if cfg.model.continue_from:  # B's adapter beside A's frozen copy, as the run evaluated it
            finetuned = continued.continue_training(model, adapter_dir(adapter))
        else:
            finetuned = saved.load(model, adapter_dir(adapter)) if adapter else model
        print("[forgetless] evaluating the fine-tuned model ...")
        after = suite.measure(finetuned, tokenizer, cfg, examples, rows, refs, base=None if adapter else base)
        result = suite.combine(before, after)
    out.mkdir(parents=True, exist_ok=True)
    files.write_json(out / "eval.json", result)
    if cfg.eval.report:
        report.write([out], out)
    return result
