"""The merged model as one GGUF file: the architecture's metadata and weights (gguf_arch), the
tokenizer (gguf_vocab), each tensor in the type asked for, written to a temporary name and renamed.

- 1-D tensors (norms, biases) and the MoE router stay float32; a weight whose rows do not fill whole
  quantization blocks stays f16, as llama.cpp's converter does;
- types the gguf package writes itself: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1; the k-quants
  (q4_k_m, q5_k_m, q6_k) come from llama.cpp's quantizer when llama-cpp-python is installed;
- one of the gguf package's types can keep groups of tensors at f16: `q8_0:f16=embed` (the embedding,
  which is the output head too when tied), `attn`, `ffn`; docs/deploy.md measures what each buys.
"""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
from tqdm.auto import tqdm

from forgetless.deploy.formats import gguf_arch, gguf_vocab
from forgetless.errors import UserError

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


# tensor groups a type can keep at f16 (`q8_0:f16=embed,attn`), by llama.cpp's tensor names
KEEP_F16 = {"embed": ("token_embd.", "output."), "attn": (".attn_",), "ffn": (".ffn_",)}


def parse_quant(quant: str) -> tuple[str, tuple[str, ...]]:
    """(the type, the groups kept at f16) of a --quant value."""
    base, _, keep = quant.partition(":f16=")
    return base, tuple(g for g in keep.split(",") if g)


def file_tag(quant: str) -> str:
    """The --quant value as it goes into a file name ('q8_0:f16=embed' -> 'q8_0-f16-embed')."""
    base, groups = parse_quant(quant)
    return "-".join((base, "f16", *groups)) if groups else base


def check_quant(quant: str) -> None:
    quant, groups = parse_quant(quant)
    unknown = [g for g in groups if g not in KEEP_F16]
    if unknown or (groups and quant not in OWN_TYPES):
        what = f"no tensor group {', '.join(unknown)}" if unknown else f"{quant} is llama.cpp's quantizer's"
        raise UserError(
            f"--quant {quant}:f16={','.join(groups)}: {what}; keep groups ({', '.join(KEEP_F16)}) at f16 within "
            f"one of {', '.join(OWN_TYPES)} (llama.cpp's quantizer chooses its own types for "
            f"{', '.join(LLAMA_CPP_TYPES)})"
        )
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


# Kept at f32 whatever the type, as llama.cpp's converter and quantizer keep them: the MoE router
# (small, and a rounding there changes which experts a token goes to).
ALWAYS_F32 = (".ffn_gate_inp.",)


def stored_type(name: str, shape: tuple[int, ...], quant: str) -> gguf.GGMLQuantizationType:
    """The type a tensor is stored as: norms, biases and the router f32; rows that do not fill whole blocks,
    and the groups the type keeps, f16."""
    quant, groups = parse_quant(quant)
    if len(shape) == 1 or quant == "f32" or any(part in name for part in ALWAYS_F32):
        return F32
    if any(part in name for g in groups for part in KEEP_F16[g]):
        return F16
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


def write(model, tokenizer, source_gguf: Path | None, out: Path, quant: str, name: str) -> Path:
    """One GGUF file for the merged model (atomic: a finished file or none)."""
    known = gguf_arch.architecture(model.config)
    base, _ = parse_quant(quant)
    own = quant if base in OWN_TYPES else "f16"  # the k-quants start from an f16 file
    tmp = out.with_name(out.name + ".part")
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[known.gguf])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(FILE_TYPES.get(base, 1))
    gguf_arch.hyperparameters(writer, model.config)
    gguf_vocab.add(writer, tokenizer, source_gguf, model.config.vocab_size, known)
    count = _tensor_infos(writer, model, own)
    _size_metadata(writer)
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


def _size_metadata(writer: gguf.GGUFWriter) -> None:
    """The quantization version and the size label ("135M", "8x7B") llama.cpp's converter writes, from
    the tensors announced: model hubs and `ollama show` read them."""
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    total, shared, experts, count = writer.get_total_parameter_count()
    if total > 0:
        writer.add_size_label(gguf.size_label(total, shared, experts, count))


def quantize_with_llama_cpp(src: Path, out: Path, quant: str) -> None:
    import llama_cpp  # optional (checked by check_quant): llama.cpp's own k-quant quantizer

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_CPP_TYPES[quant]
    if llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params) != 0:
        raise UserError(f"llama.cpp could not quantize {src} to {quant}")
