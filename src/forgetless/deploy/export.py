"""`forgetless export`: a run's adapter merged into its base and written as one GGUF file, for
llama.cpp, Ollama and LM Studio, with the architecture's metadata, the tokenizer and the run's chat
template, using the `gguf` package (the writer llama.cpp maintains).

The writers live in deploy/formats/ (gguf_model: the merged file; gguf_arch: what llama.cpp expects
of each family, from model/families.py; gguf_vocab: the tokenizer; gguf_lora; ollama); this module
checks the request, picks the writer, and records what was written (forgetless_export.json).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from forgetless import files
from forgetless.adapters import merge
from forgetless.adapters.saved import adapter_dir
from forgetless.config.fields import EXPORT_FORMATS
from forgetless.config.schema import ModelConfig
from forgetless.deploy.formats import gguf_lora, gguf_model, ollama
from forgetless.deploy.formats.gguf_arch import architecture
from forgetless.errors import UserError
from forgetless.model import loader as models

FORMATS = tuple(EXPORT_FORMATS)


def source_gguf(base_ref: str) -> Path | None:
    """The GGUF file the base model came as (the embedded alias or a .gguf path), if it came as one."""
    if base_ref in models.ALIASES:
        return models.alias_gguf(base_ref)
    path = Path(base_ref)
    return path if path.suffix == ".gguf" and path.is_file() else None


def _system_prompt(adapter: Path) -> str | None:
    config = adapter.parent / "config.yaml"
    if not config.is_file():
        return None
    tree = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    return (tree.get("data") or {}).get("system_prompt")


def _model_ref(ref: str) -> bool:
    """A model itself (alias, model directory or .gguf), not a run or adapter: exported as it is
    (the base GGUF that GGUF LoRA adapters apply to)."""
    try:
        adapter_dir(ref)
        return False
    except UserError:
        return ref in models.ALIASES or (Path(ref) / "config.json").is_file() or ref.endswith(".gguf")


def run(ref: str, fmt: str, out_dir: Path, quant: str = "f16", base: str | None = None) -> dict:
    """Export a run, adapter or model as GGUF (+ an Ollama Modelfile), or an adapter as a GGUF LoRA;
    returns what forgetless_export.json records."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    gguf_model.check_quant(quant)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"--out {out_dir} exists and is not empty; export never overwrites (choose a new directory)")
    if fmt == "gguf-lora":
        record = _lora(ref, out_dir, base)
    else:
        record = _model(ref, fmt, out_dir, quant, base)
    files.write_json(out_dir / "forgetless_export.json", record)
    return record


def _lora(ref: str, out_dir: Path, base: str | None) -> dict:
    adapter = adapter_dir(ref)
    config, base_ref = gguf_lora.base_config(adapter, base)
    architecture(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = adapter.parent.name if adapter.name == "adapter" else adapter.name
    path = gguf_lora.write(adapter, config, out_dir / f"{stem}-lora.gguf", stem)
    source = source_gguf(base_ref)
    return {
        "format": "gguf-lora",
        "file": path.name,
        "bytes": path.stat().st_size,
        "sha256": files.sha256(path),
        "adapter": str(adapter),
        "base_model": base_ref,
        "base_gguf": str(source) if source else f"forgetless export {base_ref} --format gguf --out DIR",
        "architecture": config.model_type,
    }


def _model(ref: str, fmt: str, out_dir: Path, quant: str, base: str | None) -> dict:
    adapter = None if _model_ref(ref) else adapter_dir(ref)
    if adapter is None:  # a model exported as it is
        merged, tokenizer, _ = models.load(ModelConfig(name=ref, precision="fp32"))
        facts = {"adapter": None, "base_model": ref, "merged_into": "nothing: a base model"}
    else:
        merged, tokenizer, facts = merge.load_merged(ref, base, "fp32")
    architecture(merged.config)  # unsupported architectures fail here, before any file is written
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(ref).name if adapter is None or adapter.name == "adapter" else adapter.name
    stem = stem.removesuffix(".gguf")
    target = out_dir / f"{stem}-{gguf_model.file_tag(quant)}.gguf"
    path = gguf_model.write(merged, tokenizer, source_gguf(facts["base_model"]), target, quant, stem)
    record = {
        "format": fmt,
        "file": path.name,
        "quant": quant,
        "bytes": path.stat().st_size,
        "sha256": files.sha256(path),
        "adapter": facts["adapter"],
        "base_model": facts["base_model"],
        "merged_into": facts["merged_into"],
        "architecture": merged.config.model_type,
    }
    if fmt == "ollama":
        system = _system_prompt(adapter) if adapter else None
        modelfile, recognised = ollama.write(out_dir, path.name, tokenizer, system)
        record |= {
            "modelfile": modelfile.name,
            "template": recognised,
            "register": f"ollama create {stem} -f {modelfile}",
        }
    return record
