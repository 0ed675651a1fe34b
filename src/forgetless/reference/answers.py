"""The base model's own answers to general prompts, generated once and cached.

Two things need them: self-rehearsal (`forgetting.rehearsal.source: self`, the base model's
answers become general training rows) and the retention suite (the base model's answers to the
held-out prompts are the reference that KL and agreement are measured on).

Generating is slow on a CPU (the embedded model answers ~300 prompts in about 3-4 minutes),
so a file is keyed by everything that changes its content: the model, its precision and
quantization, the chat template when data.chat_template replaces the model's own (the prompts are
rendered with it), the prompt file's bytes, the answer length and this module's version. Lookups
try the user cache (FORGETLESS_CACHE/generated/) and then the files forgetless ships in
assets/generated/, which `forgetless rehearsal generate --out src/forgetless/assets/generated`
wrote for the embedded model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from tqdm.auto import tqdm

from forgetless import files
from forgetless.adapters import continued
from forgetless.config.schema import ModelConfig
from forgetless.data.formats import Example, builtin_path, read_prompts, resolve_path
from forgetless.model import chat_format
from forgetless.model.generate import generate
from forgetless.model.loader import ALIASES, cache_dir

VERSION = 1  # bump when the generation procedure changes, so old files are not reused


def model_fingerprint(mcfg: ModelConfig, model_path: str) -> str:
    """A stable name for the weights: the alias, or a local path plus its weight files' sizes/mtimes."""
    # A continuation's base is the earlier run's model: base weights plus that adapter's bytes.
    earlier = f"+{continued.fingerprint(mcfg.continue_from)}" if mcfg.continue_from else ""
    if mcfg.name in ALIASES:
        return f"alias:{mcfg.name}{earlier}"
    path = Path(model_path)
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) if path.is_dir() else [path]
    stats = [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in weights if f.exists()]
    return f"{model_path}:{stats}{earlier}"


def key(
    mcfg: ModelConfig, model_path: str, dtype: str, prompts_ref: str, max_new_tokens: int, template: str | None = None
) -> str:
    """`template`: data.chat_template (a bundled name or a .jinja file), None for the model's own; it is
    keyed by its text, so an edited .jinja file is another key. The model's own template is part of the
    model (its fingerprint), which keeps the keys of the shipped files."""
    prompts = hashlib.sha256(resolve_path(prompts_ref).read_bytes()).hexdigest()
    parts = {
        "model": model_fingerprint(mcfg, model_path),
        "dtype": dtype,
        "quantization": mcfg.quantization,
        "prompts": prompts,
        "max_new_tokens": max_new_tokens,
        "version": VERSION,
    }
    if template is not None:
        parts["template"] = hashlib.sha256(chat_format.template_text(template).encode()).hexdigest()
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def file_name(kind: str, mcfg: ModelConfig, k: str) -> str:
    slug = mcfg.name if mcfg.name in ALIASES else "model"
    return f"{kind}-{slug}-{k}.jsonl"


def lookup(name: str, user_folder: str = "generated") -> Path | None:
    """A cached file: the user cache's `user_folder` first, then the files forgetless ships."""
    for folder in (cache_dir() / user_folder, builtin_path("generated")):
        if (folder / name).is_file():
            return folder / name
    return None


def answer_prompts(model, tokenizer, prompts_ref: str, max_new_tokens: int, desc: str, batch_size: int = 32) -> list:
    """Greedy answers of `model` to every prompt in the file: [{"messages": [..., assistant]}, ...].

    Greedy decoding makes the data a deterministic function of the key. A prompt whose answer
    comes back empty gets {"empty": true} and no assistant turn; readers skip and count it.
    """
    prompts = read_prompts(prompts_ref)
    rows = []
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt")
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        answers = generate(model, tokenizer, [list(c) for _, c in chunk], max_new_tokens, batch_size)
        for (where, conv), answer in zip(chunk, answers, strict=True):
            if answer.strip():
                rows.append({"where": where, "messages": [*conv, {"role": "assistant", "content": answer}]})
            else:
                rows.append({"where": where, "empty": True, "prompt": list(conv)})
        bar.update(len(chunk))
    bar.close()
    return rows


def save(path: Path, rows: list[dict], meta: dict) -> Path:
    """Write atomically: a crash mid-write must not leave a truncated file that later runs trust."""
    files.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    files.write_json(path.with_suffix(".meta.json"), meta)
    return path


def ensure(
    kind: str,
    model,
    tokenizer,
    mcfg: ModelConfig,
    model_path: str,
    dtype: str,
    prompts_ref: str,
    max_new_tokens: int,
    out_dir: Path | None = None,
    force: bool = False,
    template: str | None = None,
) -> tuple[Path, bool]:
    """(path of the cached answers, whether they were generated now); generates on a miss. `template`:
    data.chat_template, already applied to `tokenizer` (chat_format.apply_template)."""
    k = key(mcfg, model_path, dtype, prompts_ref, max_new_tokens, template)
    name = file_name(kind, mcfg, k)
    found = None if force else lookup(name)
    if found is not None:
        if out_dir is None or found.parent.resolve() == out_dir.resolve():
            return found, False
        out_dir.mkdir(parents=True, exist_ok=True)
        for suffix in (".jsonl", ".meta.json"):
            shutil.copyfile(found.with_suffix(suffix), (out_dir / name).with_suffix(suffix))
        return out_dir / name, False
    t0 = time.time()
    rows = answer_prompts(model, tokenizer, prompts_ref, max_new_tokens, desc=f"{kind}: base-model answers")
    meta = {
        "kind": kind,
        "model": model_fingerprint(mcfg, model_path),
        "dtype": dtype,
        "quantization": mcfg.quantization,
        "prompts": prompts_ref,
        "max_new_tokens": max_new_tokens,
        "chat_template": template,
        "version": VERSION,
        "rows": len(rows),
        "empty": sum(1 for r in rows if r.get("empty")),
        "seconds": round(time.time() - t0, 1),
    }
    return save((out_dir or cache_dir() / "generated") / name, rows, meta), True


def read_answers(path: Path, limit: int | None = None) -> tuple[list[Example], int]:
    """(the answers as examples, how many prompts were left out because the answer was empty)."""
    examples, empty = [], 0
    for line in files.jsonl_lines(path.read_text(encoding="utf-8")):
        row = json.loads(line)
        if row.get("empty"):
            empty += 1
            continue
        examples.append(Example(row["where"], messages=tuple(row["messages"])))
    return examples[:limit], empty
