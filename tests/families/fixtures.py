"""Real tokenizers and chat templates of the model families, made from llama.cpp's own test files.

`python -m tests.families.fixtures` (and the test session, on first use) downloads the
llama-cpp-python source distribution from PyPI (pip's cache keeps it), takes the vocab-only GGUF
files and chat templates that llama.cpp vendors for its own tests, converts each vocabulary to a
Hugging Face tokenizer with transformers' GGUF reader, sets the chat template and the special
tokens the family's instruct model uses, and saves it under $FORGETLESS_CACHE/families/. Nothing
is copied into the repository by hand; SOURCES.md beside the files says where each came from.

Licences: llama.cpp is MIT (its LICENSE is kept beside the files). The vocabularies and templates
come from the models' own repositories: Llama 3 (Llama 3.1 Community License), Llama 2 / Mistral
(Llama 2 Community License / Apache-2.0), Qwen2.5 and Qwen3 (Apache-2.0), Phi-3.5 (MIT), Gemma
(Gemma Terms of Use). They are used here as test fixtures only and not redistributed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

LLAMA_CPP_PYTHON = "0.3.36"  # pinned: the files below are checked against this release

# family -> (vocab GGUF, template, special tokens and add_bos_token as the model's tokenizer_config sets them,
#            what the pairing stands for)
TOKENIZERS = {
    "llama3": ("llama-bpe", "meta-llama-Llama-3.1-8B-Instruct", {"eos_token": "<|eot_id|>"}, "Llama-3.1-8B-Instruct"),
    "mistral": (
        "llama-spm",
        "mistralai-Mistral-Nemo-Instruct-2407",
        {},
        "Llama-2 / Mistral-7B vocabulary, [INST] template",
    ),
    "qwen2": (
        "qwen2",
        "Qwen-Qwen2.5-7B-Instruct",
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        "Qwen2.5-7B-Instruct",
    ),
    "qwen3": (
        "qwen35",
        "Qwen-Qwen3-0.6B",
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        "Qwen3 template, Qwen3.5 vocabulary",
    ),
    "phi3": ("phi-3", "microsoft-Phi-3.5-mini-instruct", {"eos_token": "<|endoftext|>"}, "Phi-3.5-mini-instruct"),
    "gemma": ("gemma-4", "google-gemma-2-2b-it", {}, "Gemma-2 template (no system role), Gemma-4 vocabulary"),
    "gemma4": ("gemma-4", "google-gemma-4-31B-it", {"add_bos_token": True}, "Gemma-4-31B-it"),
}


# llama.cpp's converter has no path from tokenizer.json alone for these tokenizers: it reads a
# sentencepiece tokenizer.model, made here from the llama.cpp vocabulary.
# tokenizer -> (pieces in it, whether it puts '▁' before a text)
SENTENCEPIECE = {"phi3": (32000, True), "gemma": (262144, False)}


def root() -> Path:
    base = Path(os.environ.get("FORGETLESS_CACHE", Path.home() / ".cache" / "forgetless"))
    return base / "families" / LLAMA_CPP_PYTHON


def tokenizer_dir(family: str) -> Path:
    return root() / "tokenizers" / family


def ensure() -> Path:
    """Build whatever is missing; returns the folder. Idempotent and atomic per tokenizer."""
    if all((tokenizer_dir(f) / "tokenizer_config.json").is_file() for f in TOKENIZERS) and all(
        sentencepiece_path(f).is_file() for f in SENTENCEPIECE
    ):
        return root()
    raw = _extract()
    for family, (vocab, template, special, _stands_for) in TOKENIZERS.items():
        out = tokenizer_dir(family)
        if not (out / "tokenizer_config.json").is_file():
            _convert(
                raw / "models" / f"ggml-vocab-{vocab}.gguf",
                raw / "models" / "templates" / f"{template}.jinja",
                special,
                out,
            )
    for family in SENTENCEPIECE:
        sentencepiece_model(family)
    _write_sources(raw)
    return root()


def _sdist() -> Path:
    """The llama-cpp-python source archive (downloaded once; pip's cache keeps it too)."""
    sdist_dir = root() / "sdist"
    sdist_dir.mkdir(parents=True, exist_ok=True)
    name = f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not (sdist_dir / name).is_file():
        print(f"[fixtures] pip download llama-cpp-python=={LLAMA_CPP_PYTHON} (source, ~77 MB) ...", file=sys.stderr)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-binary",
                ":all:",
                "--no-deps",
                f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
                "-d",
                str(sdist_dir),
            ],
            check=True,
        )
    return sdist_dir / name


def _unpack(out: Path, wanted, marker: str) -> Path:
    """The files of llama.cpp's tree for which `wanted(relative path)` holds, under `out` (atomic:
    `marker` is one of them, and the folder is renamed into place once all are there)."""
    if (out / marker).is_file():
        return out
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(_sdist()) as tar:
        for member in tar.getmembers():
            rel = member.name.removeprefix(prefix)
            if rel != member.name and member.isfile() and wanted(rel):
                member.name = rel
                tar.extract(member, tmp, filter="data")
    if not (tmp / marker).is_file():
        raise RuntimeError(f"llama-cpp-python {LLAMA_CPP_PYTHON} lacks {marker}")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def _extract() -> Path:
    wanted = {f"models/ggml-vocab-{v}.gguf" for v, *_ in TOKENIZERS.values()}
    wanted |= {f"models/ggml-vocab-{v}.gguf.{end}" for v, *_ in TOKENIZERS.values() for end in ("inp", "out")}
    wanted |= {f"models/templates/{t}.jinja" for _, t, *_ in TOKENIZERS.values()} | {"LICENSE"}
    raw = root() / "llama.cpp"
    if any(not (raw / w).is_file() for w in wanted):  # a folder from an earlier version of this list
        shutil.rmtree(raw, ignore_errors=True)
    _unpack(raw, wanted.__contains__, "LICENSE")
    missing = sorted(w for w in wanted if not (raw / w).is_file())
    if missing:
        raise RuntimeError(f"llama-cpp-python {LLAMA_CPP_PYTHON} lacks {missing}")
    return raw


def converter() -> Path:
    """llama.cpp's own converter (convert_hf_to_gguf.py, its conversion/ package and the gguf-py it
    imports), unpacked from the same source archive: the reference the GGUF export is compared with."""

    def wanted(rel: str) -> bool:
        return rel == "convert_hf_to_gguf.py" or rel.startswith(("conversion/", "gguf-py/gguf/"))

    return _unpack(root() / "converter", wanted, "convert_hf_to_gguf.py")


def vocab_vectors(family: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's tokenizer test vectors for the family's vocabulary: (text, the ids llama.cpp's
    tests expect, which its maintainers made with the model's own Hugging Face tokenizer)."""
    vocab = _extract() / "models" / f"ggml-vocab-{TOKENIZERS[family][0]}.gguf"
    texts = vocab.with_name(vocab.name + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    ids = vocab.with_name(vocab.name + ".out").read_text(encoding="utf-8").split("\n")
    return [(text, [int(i) for i in line.split()]) for text, line in zip(texts, ids, strict=False)]


def sentencepiece_path(family: str) -> Path:
    return root() / "sentencepiece" / f"{family}.model"


def sentencepiece_model(family: str) -> Path:
    """A sentencepiece tokenizer.model holding the first pieces (SENTENCEPIECE) of the family's llama.cpp
    vocabulary with their scores and types: what llama.cpp's converter reads for Phi-3 and Gemma (it
    has no Hugging Face-only path for them). The tokens after those are the tokenizer's added ones.
    Made once per machine (20 s for Gemma's 262k pieces) and kept beside the tokenizers."""
    out = sentencepiece_path(family)
    if out.is_file():
        return out
    import gguf
    from sentencepiece import sentencepiece_model_pb2 as sp

    pieces, dummy_prefix = SENTENCEPIECE[family]
    reader = gguf.GGUFReader(str(root() / "llama.cpp" / "models" / f"ggml-vocab-{TOKENIZERS[family][0]}.gguf"))
    tokens, scores, types = (
        reader.fields[f"tokenizer.ggml.{k}"].contents() for k in ("tokens", "scores", "token_type")
    )
    model = sp.ModelProto()
    model.trainer_spec.model_type = sp.TrainerSpec.BPE
    model.trainer_spec.vocab_size = pieces
    model.trainer_spec.byte_fallback = True
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = dummy_prefix
    model.normalizer_spec.remove_extra_whitespaces = False
    model.normalizer_spec.escape_whitespaces = True
    for token, score, kind in zip(tokens[:pieces], scores[:pieces], types[:pieces], strict=True):
        piece = model.pieces.add()
        piece.piece, piece.score, piece.type = token, score, kind
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")  # two test workers may make it at once
    tmp.write_bytes(model.SerializeToString())
    os.replace(tmp, out)
    return out


def _convert(gguf: Path, template: Path, special: dict, out: Path) -> None:
    """A GGUF vocabulary as a saved Hugging Face tokenizer with the family's template and specials."""
    # test-only tooling: transformers' GGUF tokenizer reader
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer

    from forgetless.model.loader import save_tokenizer

    print(f"[fixtures] converting {gguf.name} (seconds to a minute) ...", file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except Exception:  # gemma-4: transformers reads the file's model config and rejects it; the vocabulary is fine
            arch, vocab, config = get_gguf_tokenizer(str(gguf))
            backend, _ = convert_gguf_tokenizer(arch, vocab)
            names = ("bos_token", "eos_token", "unk_token", "pad_token")
            tok = PreTrainedTokenizerFast(tokenizer_object=backend, **{k: config[k] for k in names if config.get(k)})
    for key, token in special.items():
        if isinstance(token, str) and token not in tok.get_vocab():
            raise RuntimeError(f"{gguf.name}: {token} is not in the vocabulary")
        setattr(tok, key, token)
    tok.chat_template = template.read_text(encoding="utf-8")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_tokenizer(tok, tmp)  # the added tokens in tokenizer_config.json, as hub repositories carry them
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def _write_sources(raw: Path) -> None:
    lines = [
        f"# Test tokenizers, made by tests/families/fixtures.py from llama-cpp-python {LLAMA_CPP_PYTHON}",
        "",
        "llama.cpp is MIT-licensed (LICENSE here). The vocabularies and templates come from the model",
        "repositories and keep those models' licences; they are test fixtures, not redistributed.",
        "",
        "| family | vocabulary (llama.cpp models/) | chat template (models/templates/) | stands for |",
        "|---|---|---|---|",
    ]
    lines += [f"| {f} | ggml-vocab-{v}.gguf | {t}.jinja | {s} |" for f, (v, t, _, s) in TOKENIZERS.items()]
    (root() / "SOURCES.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.copy(raw / "LICENSE", root() / "LICENSE-llama.cpp")


if __name__ == "__main__":
    print(ensure())
