"""`forgetless export`: a run's adapter merged into its base and written as one GGUF file, for
llama.cpp, Ollama and LM Studio, with the architecture's metadata, the tokenizer and the run's chat
template, using the `gguf` package (the writer llama.cpp maintains).

What llama.cpp expects, and why each step is here (gguf_arch holds one row per architecture:
Llama, Mistral, Mixtral, Qwen2, Qwen3, Phi-3, Gemma-2):
- tensor names: the gguf package's own map from Hugging Face names (`blk.N.attn_q.weight` ...);
  Mixtral's fused expert weights split into llama.cpp's gate and up expert tensors;
- Llama-rope query/key rows reordered for llama.cpp's rotary layout (it pairs dimension i with i+1
  where transformers pairs i with i+d/2); NEOX-rope architectures (Qwen, Phi-3, Gemma) keep theirs;
  Llama-3.1's rope scaling becomes the rope_freqs tensor; Gemma's norms stored as 1 + w;
- 1-D tensors (norms, biases) stay float32; a weight whose rows do not fill whole quantization
  blocks stays f16, as llama.cpp's converter does;
- the tokenizer: copied from the base's own GGUF when the base came as one (the embedded model),
  else built from the Hugging Face tokenizer (gguf_vocab: byte-level BPE or sentencepiece-style).
Types the gguf package writes itself: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1; the k-quants
(q4_k_m, q5_k_m, q6_k) come from llama.cpp's quantizer when llama-cpp-python is installed.
"""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
import yaml
from tqdm.auto import tqdm

from forgetless import files
from forgetless.adapters import merge
from forgetless.adapters.saved import adapter_dir
from forgetless.config.fields import EXPORT_FORMATS
from forgetless.config.schema import ModelConfig
from forgetless.deploy import gguf_arch, gguf_lora, gguf_vocab, ollama
from forgetless.deploy.gguf_arch import architecture
from forgetless.errors import UserError
from forgetless.model import loader as models

OWN_TYPES = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "bf16": gguf.GGMLQuantizationType.BF16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "q4_0": gguf.GGMLQuantizationType.Q4_0,
    "q4_1": gguf.GGMLQuantizationType.Q4_1,
    "q5_0": gguf.GGMLQuantizationType.Q5_0,
    "q5_1": gguf.GGMLQuantizationType.Q5_1,
}
FILE_TYPES = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7, "q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9}
# llama.cpp's quantizer (llama_ftype values of llama.h)
LLAMA_CPP_TYPES = {"q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}
# Below 8 bits, the embedding and output layers stay at q8_0 (llama.cpp's quantizer keeps them high too).
SENSITIVE = ("token_embd.weight", "output.weight")


def check_quant(quant: str) -> None:
    if quant in OWN_TYPES:
        return
    if quant not in LLAMA_CPP_TYPES:
        raise UserError(f"--quant {quant}: unknown; choose one of {', '.join([*OWN_TYPES, *LLAMA_CPP_TYPES])}")
    try:
        import llama_cpp  # noqa: F401  (optional: pip install 'forgetless[gguf]')
    except ImportError:
        raise UserError(
            f"--quant {quant} needs llama.cpp's quantizer: pip install 'forgetless[gguf]' (builds llama-cpp-python); "
            f"without it: {', '.join(OWN_TYPES)}"
        ) from None


F16, F32 = gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32
EIGHT_BITS_OR_MORE = (F16, gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.BF16)


def stored_type(name: str, shape: tuple[int, ...], quant: str) -> gguf.GGMLQuantizationType:
    """The type a tensor is stored as: norms and biases f32; rows that do not fill whole blocks f16."""
    if len(shape) == 1 or quant == "f32":
        return F32
    kind = OWN_TYPES[quant]
    if kind not in EIGHT_BITS_OR_MORE and name in SENSITIVE:
        kind = gguf.GGMLQuantizationType.Q8_0
    if kind == F16 or shape[-1] % gguf.GGML_QUANT_SIZES[kind][0]:
        return F16
    return kind


def encode(name: str, data: np.ndarray, quant: str) -> np.ndarray:
    kind = stored_type(name, data.shape, quant)
    if kind in (F32, F16):
        return data.astype(np.float32 if kind == F32 else np.float16)
    return gguf.quants.quantize(data, kind)


def _tensor_infos(writer: gguf.GGUFWriter, model, quant: str) -> int:
    """Announce every tensor's name, shape and type; the data follows one tensor at a time, so the
    export holds the merged model plus one tensor, not a second copy of the model (a 7B model)."""
    count = 0
    for name, w in gguf_arch.weights(model):
        shape, kind = tuple(w.shape), stored_type(name, tuple(w.shape), quant)
        if kind in (F32, F16):
            dtype = np.float32 if kind == F32 else np.float16
            writer.add_tensor_info(name, shape, np.dtype(dtype), w.numel() * np.dtype(dtype).itemsize)
        else:
            stored = gguf.quant_shape_to_byte_shape(shape, kind)
            writer.add_tensor_info(name, stored, np.dtype(np.uint8), int(np.prod(stored)), raw_dtype=kind)
        count += 1
    return count


def write_gguf(model, tokenizer, source_gguf: Path | None, out: Path, quant: str, name: str) -> Path:
    """One GGUF file for the merged model (atomic: a finished file or none)."""
    arch = architecture(model.config).gguf
    own = quant if quant in OWN_TYPES else "f16"  # the k-quants start from an f16 file
    tmp = out.with_name(out.name + ".part")
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(FILE_TYPES.get(quant, 1))
    gguf_arch.hyperparameters(writer, model.config)
    gguf_vocab.add(writer, tokenizer, source_gguf, model.config.vocab_size)
    count = _tensor_infos(writer, model, own)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    # a 7B file takes minutes: show it moving
    for tensor_name, w in tqdm(gguf_arch.weights(model), total=count, desc=f"writing {own} GGUF", unit="tensor"):
        writer.write_tensor_data(encode(tensor_name, w.numpy(), own))
    writer.close()
    if quant in LLAMA_CPP_TYPES:
        print(f"[forgetless] quantizing to {quant} with llama.cpp's quantizer (no progress shown; minutes for 7B)")
        quantized = out.with_name(out.name + f".{quant}.part")  # renamed into place once llama.cpp is done
        try:
            quantize_with_llama_cpp(tmp, quantized, quant)
            os.replace(quantized, out)
        finally:
            tmp.unlink(missing_ok=True)
            quantized.unlink(missing_ok=True)
    else:
        os.replace(tmp, out)
    return out


def quantize_with_llama_cpp(src: Path, out: Path, quant: str) -> None:
    import llama_cpp  # optional (checked by check_quant): llama.cpp's own k-quant quantizer

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_CPP_TYPES[quant]
    if llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params) != 0:
        raise UserError(f"llama.cpp could not quantize {src} to {quant}")


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
    check_quant(quant)
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
    path = write_gguf(
        merged, tokenizer, source_gguf(facts["base_model"]), out_dir / f"{stem}-{quant}.gguf", quant, stem
    )
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
