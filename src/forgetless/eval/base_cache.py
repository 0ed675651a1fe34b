"""The base side of an evaluation, computed once per model and eval set and reused by every run.

The base model's scores (task answers and perplexity, multiple choice, general-text perplexity)
depend only on: the weights (alias, or a local path with its files' sizes and times) and how they
are loaded (precision, quantization, attention, device), the scored rows (their content and token
ids), the eval settings, the files the suite reads (by content), data.max_length and the system
prompt, and this scorer's version. They are a pure function of those, so a second `train`, every
`compare` variant and a rerun of the pipeline reuse them instead of spending minutes on a CPU.

Lookups try the user cache (FORGETLESS_CACHE/eval/) and then the files forgetless ships in
assets/generated/ (`python scripts/ship_base_scores.py` writes the quickstart's for the embedded
model). A changed input is another key: nothing stale is ever read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from forgetless import files
from forgetless.config.schema import Config
from forgetless.data.formats import resolve_path
from forgetless.model.loader import ALIASES, cache_dir
from forgetless.reference import answers

VERSION = 1  # bump when a base-side metric is computed differently


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key(cfg: Config, model_path: str, dtype: str, device: str, examples, rows: list[dict]) -> str:
    e = cfg.eval
    parts = {
        "model": answers.model_fingerprint(cfg.model, model_path),
        "loading": cfg.model.model_dump(mode="json", exclude={"name"}) | {"dtype": dtype, "device": device},
        "examples": _sha(json.dumps([ex.messages for ex in examples], ensure_ascii=False).encode()),
        "rows": _sha(json.dumps([[r["input_ids"], r["labels"]] for r in rows]).encode()),
        "eval": e.key_fields(),
        "files": {ref: _sha(resolve_path(ref).read_bytes()) for ref in [*e.benchmarks, *e.general_text]},
        "data": {"max_length": cfg.data.max_length, "system_prompt": cfg.data.system_prompt},
        "version": VERSION,
    }
    return _sha(json.dumps(parts, sort_keys=True).encode())[:16]


def file_name(cfg: Config, k: str) -> str:
    return f"base-eval-{cfg.model.name if cfg.model.name in ALIASES else 'model'}-{k}.json"


def lookup(name: str) -> Path | None:
    return answers.lookup(name, "eval")


def reuse(name: str, compute) -> tuple[dict, bool]:
    """(the base side, whether it came from the cache); a fresh result is stored for next time."""
    found = lookup(name)
    if found is not None:
        return json.loads(found.read_text(encoding="utf-8")), True
    value = compute()
    files.write_json(cache_dir() / "eval" / name, value)  # two runs at once never see half a file
    return value, False
