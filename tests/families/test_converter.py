"""Agreement with llama.cpp's own converter. For every family, `forgetless export --format gguf` of a
tiny model (f32 and f16) and llama.cpp's convert_hf_to_gguf.py of the same folder (from the
llama-cpp-python source the tests already use) hold the same tensors bit for bit, with the same
types and shapes, and the same metadata keys and values except those named in DIFFERENCES, each
with why ours is right. Tensor order in the file is not compared: llama.cpp finds tensors by name.
Every named difference must occur, so the table stays exact.

The exported vocabularies then tokenize llama.cpp's own tokenizer test vectors (made by its
maintainers with each model's Hugging Face tokenizer) to the ids those expect, in llama.cpp."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import ClassVar

import gguf
import numpy as np
import pytest
from llama_cpp import Llama
from transformers import AutoConfig

from forgetless.deploy import export
from forgetless.deploy.formats.gguf_arch import architecture
from tests.families import fixtures
from tests.families.conftest import ARCHITECTURES, FAMILIES, family_model_dir

pytestmark = pytest.mark.seconds(200)  # the longest files start first (tests/conftest.py)

SPM = {"mistral", "mixtral", "phi3", "gemma", "gemma3"}  # sentencepiece-style vocabularies (llama.cpp's "llama")
EXPLICIT = (
    "ours writes the value llama.cpp derives when the key is absent (hidden size / heads, the head size, "
    "the token count, rope base 10000); the converter writes it only where it differs"
)
HF_ONLY = (
    "ours: whether the Hugging Face tokenizer adds it (these fixtures' tokenizers do not); the converter "
    "writes it only from tokenizer_config.json, else leaves llama.cpp's default"
)
# metadata key ({arch}: the GGUF architecture) -> (families where it differs, why ours is right)
DIFFERENCES: dict[str, tuple[set[str], str]] = {
    "general.name": (set(FAMILIES), "ours: the folder's own name; theirs: a title-cased guess ('Tiny Llama3')"),
    "{arch}.attention.key_length": ({"qwen2", "mixtral", "phi3"}, EXPLICIT),
    "{arch}.attention.value_length": ({"qwen2", "mixtral", "phi3"}, EXPLICIT),
    "{arch}.rope.dimension_count": ({"qwen2", "qwen3", "gemma", "gemma3"}, EXPLICIT),
    "{arch}.rope.freq_base": ({"gemma"}, EXPLICIT),
    "{arch}.vocab_size": ({"qwen2", "qwen3", "phi3", "gemma", "gemma3", "gemma4"}, EXPLICIT),
    "{arch}.final_logit_softcapping": (
        {"gemma4"},
        "ours 0 for a config without soft-capping: llama.cpp caps Gemma-4's logits at 30 when the key is absent, "
        "so the converter's file of this model answers differently from transformers (test_gguf compares ours "
        "with transformers in llama.cpp)",
    ),
    "tokenizer.ggml.add_bos_token": (
        {"llama3", "qwen2", "qwen3", "gemma", "gemma3", "phi3"},
        HF_ONLY + "; Phi-3.5: ours false, its chat template writes no BOS, so chat prompts never had one in "
        "training (gguf_vocab.adds_bos), where theirs (true) would make llama.cpp add one",
    ),
    "tokenizer.ggml.add_eos_token": (set(FAMILIES), HF_ONLY),
    "tokenizer.ggml.add_sep_token": (
        SPM - {"gemma", "gemma3"} | {"gemma4"},
        "theirs writes false, llama.cpp's default, which ours leaves",
    ),
    "tokenizer.ggml.add_space_prefix": (
        SPM - {"gemma", "gemma3"},
        "ours reads it from tokenizer.json's normalizer / pre-tokenizer (gguf_vocab._space_prefix: false for "
        "transformers' 'first' scheme, so chat prompts tokenize as transformers does); theirs leaves the default",
    ),
    "tokenizer.ggml.pre": (
        {"llama3"},
        "theirs names the pre-tokenizer from a hash of the fixture's tokenization, which (rebuilt from a GGUF, "
        "without Llama-3's ignore_merges) hashes like Smaug's; ours from the split regex: llama-bpe, and "
        "llama.cpp's own vectors tokenize right with it (test below)",
    ),
    "tokenizer.ggml.scores": (
        SPM | {"gemma4"},
        "ours: minus the rank of the first merge that makes each token, so llama.cpp merges in transformers' "
        "order; theirs: -1000 for every token from tokenizer.json (Mistral), or the sentencepiece model's scores; "
        "Gemma-4: none in ours, llama.cpp's gemma4 tokenizer merges by the merges' order and reads no scores",
    ),
    "tokenizer.ggml.token_type": (
        SPM | {"gemma4"},
        "<unk> is UNKNOWN in ours as sentencepiece types it (theirs: CONTROL from tokenizer.json); padding and "
        "added tokens typed as the Hugging Face tokenizer lists them; Gemma-4: ours types the turn, tool and "
        "media markers CONTROL as llama.cpp's own ggml-vocab-gemma-4.gguf does, theirs NORMAL because the "
        "fixture's tokenizer does not list them among its special tokens",
    ),
}


# llama.cpp's converter run once per output type inside one program (its main() reads sys.argv), so
# that torch and the converter are imported once for both files
CONVERT_EACH = """
import sys
import convert_hf_to_gguf
model = sys.argv[1]
for outtype, outfile in zip(sys.argv[2::2], sys.argv[3::2]):
    sys.argv = ["convert_hf_to_gguf.py", model, "--outtype", outtype, "--outfile", outfile]
    convert_hf_to_gguf.main()
"""


def convert_with_llama_cpp(model_dir, outs: dict[str, Path], log: Path) -> subprocess.Popen:
    """llama.cpp's converter, started in the background (it runs beside our export): one file per
    output type in `outs`."""
    tool = fixtures.converter()
    env = os.environ | {"PYTHONPATH": f"{tool / 'gguf-py'}{os.pathsep}{tool}"}
    pairs = [str(x) for outtype, out in outs.items() for x in (outtype, out)]
    with open(log, "w", encoding="utf-8") as f:  # the child holds its own copy of the fd
        command = [sys.executable, "-c", CONVERT_EACH, str(model_dir), *pairs]
        return subprocess.Popen(command, env=env, stdout=f, stderr=subprocess.STDOUT)


def finished(process: subprocess.Popen, log: Path) -> None:
    code = process.wait(timeout=600)
    assert code == 0, log.read_text(encoding="utf-8")[-2000:]


class Gguf:
    """A GGUF file's metadata values and tensors as raw bytes, for comparing two files. gguf's own
    GGUFReader builds one object per vocabulary string (8 s for Llama-3's 128k tokens); this walks the
    same layout (GGUF v3: header, key/values, tensor infos, aligned data) and keeps byte spans."""

    # GGUFValueType -> bytes of a scalar
    SCALARS: ClassVar[dict[int, int]] = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def __init__(self, path):
        self.data = np.memmap(path, mode="r")
        assert bytes(self.data[:4]) == b"GGUF" and self._int(4, 4) == 3
        n_tensors, n_kv = self._int(8, 8), self._int(16, 8)
        at, self.metadata = 24, {}
        for _ in range(n_kv):
            key, at = self._str(at)
            kind = self._int(at, 4)
            end = self._skip(at + 4, kind)
            self.metadata[key] = bytes(self.data[at:end])  # the value's type and encoding
            at = end
        infos = []
        for _ in range(n_tensors):
            name, at = self._str(at)
            dims = [self._int(at + 4 + 8 * i, 8) for i in range(self._int(at, 4))]
            at += 4 + 8 * len(dims)
            kind, offset = gguf.GGMLQuantizationType(self._int(at, 4)), self._int(at + 4, 8)
            infos.append((name, dims, kind, offset))
            at += 12
        align = self._int(self.metadata["general.alignment"][4:], 4) if "general.alignment" in self.metadata else 32
        start = -(-at // align) * align
        self.tensors = {}
        for name, dims, kind, offset in infos:
            block, size = gguf.GGML_QUANT_SIZES[kind]
            nbytes = int(np.prod(dims)) // block * size
            self.tensors[name] = (kind.name, dims, bytes(self.data[start + offset : start + offset + nbytes]))

    def _int(self, at: int, size: int) -> int:
        return int.from_bytes(bytes(self.data[at : at + size]), "little")

    def _str(self, at: int) -> tuple[str, int]:
        n = self._int(at, 8)
        return bytes(self.data[at + 8 : at + 8 + n]).decode("utf-8"), at + 8 + n

    def _skip(self, at: int, kind: int) -> int:
        if kind == 8:  # string
            return at + 8 + self._int(at, 8)
        if kind == 9:  # array: element type, count, elements
            inner, count, at = self._int(at, 4), self._int(at + 4, 8), at + 12
            if inner in self.SCALARS:
                return at + count * self.SCALARS[inner]
            for _ in range(count):
                at = self._skip(at, inner)
            return at
        return at + self.SCALARS[kind]


def _value(path, key: str):
    """One metadata value decoded, for a failure message."""
    field = gguf.GGUFReader(path).fields.get(key)
    value = field.contents() if field else None
    return f"{len(value)} items" if isinstance(value, list) and len(value) > 8 else value


@pytest.mark.parametrize("family", FAMILIES)
def test_export_agrees_with_llama_cpps_converter(
    family, family_model_dirs, family_tokenizers, tmp_path_factory, tmp_path
):
    ours_dir = family_model_dir(family_model_dirs, family_tokenizers, tmp_path_factory, family)
    theirs_dir = tmp_path / "model"
    shutil.copytree(ours_dir, theirs_dir)
    if ARCHITECTURES[family][0] in fixtures.SENTENCEPIECE:  # the converter reads a sentencepiece model for these
        shutil.copy(fixtures.sentencepiece_model(ARCHITECTURES[family][0]), theirs_dir / "tokenizer.model")
    arch = gguf.MODEL_ARCH_NAMES[architecture(AutoConfig.from_pretrained(ours_dir)).gguf]
    expected = {key.format(arch=arch): why for key, (where, why) in DIFFERENCES.items() if family in where}
    theirs_files = {t: tmp_path / f"theirs-{t}.gguf" for t in ("f32", "f16")}
    converting = convert_with_llama_cpp(theirs_dir, theirs_files, tmp_path / "theirs.log")
    ours_files = {t: tmp_path / t / export.run(ours_dir, "gguf", tmp_path / t, t)["file"] for t in theirs_files}
    finished(converting, tmp_path / "theirs.log")
    for outtype, theirs_file in theirs_files.items():
        ours_file = ours_files[outtype]
        ours, theirs = Gguf(ours_file), Gguf(theirs_file)
        assert len(ours.tensors) >= 10 and len(ours.metadata) >= 20
        assert sorted(ours.tensors) == sorted(theirs.tensors)
        differ = [name for name, t in ours.tensors.items() if t != theirs.tensors[name]]
        assert not differ, f"{outtype}: {[(n, ours.tensors[n][:2], theirs.tensors[n][:2]) for n in differ]}"
        a, b = ours.metadata, theirs.metadata
        found = {key for key in a.keys() | b.keys() if a.get(key) != b.get(key)}
        unexplained = {key: (_value(ours_file, key), _value(theirs_file, key)) for key in found - expected.keys()}
        assert not unexplained, f"{outtype}: differences without a reason: {json.dumps(unexplained, default=str)}"
        assert found == expected.keys(), f"{outtype}: named but not found: {sorted(expected.keys() - found)}"


@pytest.mark.parametrize("family", FAMILIES)
def test_exported_vocabulary_tokenizes_llama_cpps_test_vectors(
    family, family_model_dirs, family_tokenizers, tmp_path_factory, tmp_path
):
    """llama-spm's vectors were made with Llama-2's tokenizer, which puts '▁' before every text; the
    Mistral fixture's tokenizer.json (transformers' 'first' scheme) does not, and is checked in the
    layout Llama-2 ships: the same vocabulary with the 'always' scheme."""
    model_dir = family_model_dir(family_model_dirs, family_tokenizers, tmp_path_factory, family)
    if family in ("mistral", "mixtral"):
        model_dir = shutil.copytree(model_dir, tmp_path / "always")
        spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
        assert spec["pre_tokenizer"]["prepend_scheme"] == "first"
        spec["pre_tokenizer"]["prepend_scheme"] = "always"
        (model_dir / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    path = tmp_path / "out" / export.run(str(model_dir), "gguf", tmp_path / "out")["file"]
    vectors = fixtures.vocab_vectors(ARCHITECTURES[family][0])
    assert len(vectors) >= 40
    got = _tokenized(path, vectors)
    wrong = [(text, ids) for (text, ids), mine in zip(vectors, got, strict=True) if mine != ids]
    assert not wrong, wrong[:3]
    if family == "mistral":  # docs/deploy.md: the converter's file, from tokenizer.json alone, gets 31 of 47
        converting = convert_with_llama_cpp(model_dir, {"f16": tmp_path / "theirs.gguf"}, tmp_path / "theirs.log")
        finished(converting, tmp_path / "theirs.log")
        theirs = _tokenized(tmp_path / "theirs.gguf", vectors)
        right = sum(t == ids for (_, ids), t in zip(vectors, theirs, strict=True))
        assert (len(vectors), right) == (47, 31)


def _tokenized(path, vectors) -> list[list[int]]:
    """llama.cpp's ids for each vector's text, with the vocabulary in `path` (loaded once)."""
    with closing(Llama(model_path=str(path), vocab_only=True, verbose=False)) as llm:
        return [llm.tokenize(text.encode(), add_bos=False, special=False) for text, _ in vectors]
