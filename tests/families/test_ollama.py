"""The Ollama Modelfile of every family renders what the model was trained and evaluated on. Each
family's real template (and SmolLM2's, with its default system turn) goes through `ollama.modelfile`;
its TEMPLATE then runs in Go's text/template, fed as Ollama's server feeds it (ollama_render/main.go:
the Modelfile's SYSTEM first when a request has none, system messages in .System and in .Messages),
and must equal forgetless's own rendering of the same conversation (model/chat_format.prompt_text),
with BOS where llama.cpp puts it itself. Go comes from Debian (golang-go, which .ci/run installs).

Message texts here have no surrounding whitespace: Llama-3's and Gemma's templates trim it, and Go's
templates (with Ollama's functions) have no trim; docs/deploy.md says so."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from forgetless.deploy.formats import ollama
from forgetless.deploy.formats.gguf_vocab import adds_bos
from forgetless.model import loader as models
from forgetless.model.chat_format import prompt_text, turn_end
from tests.families import fixtures

TOKENIZERS = [*fixtures.TOKENIZERS, "smollm2"]
HI = {"role": "user", "content": "Hi"}
CONVERSATIONS = [
    [{"role": "user", "content": "My order 48213 is late! 注文番号 5522 の商品が届きません。"}],
    [HI, {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "And 5523?"}],
    [{"role": "system", "content": "Answer in one line."}, {"role": "user", "content": "My order is late."}],
    [
        {"role": "system", "content": "Answer in one line."},
        HI,
        {"role": "assistant", "content": "Hello!"},
        HI,
        {"role": "assistant", "content": "Hello again."},
        {"role": "user", "content": "Order 5523?"},
    ],
]


@pytest.fixture(scope="session")
def go_renderer(tmp_path_factory) -> Path:
    if shutil.which("go") is None:
        pytest.skip("Go is not installed (apt-get install golang-go; .ci/run installs it)")
    out = tmp_path_factory.mktemp("go") / "ollama_render"
    source = Path(__file__).parent / "ollama_render"
    subprocess.run(["go", "build", "-o", str(out), "."], cwd=source, check=True, timeout=300)
    return out


def rendered_by_ollama(renderer: Path, template: str, system: str, requests: list) -> list[str]:
    done = subprocess.run(
        [str(renderer)],
        input=json.dumps({"template": template, "system": system, "requests": requests}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def modelfile_parts(text: str) -> tuple[str, str, list[str]]:
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    system = text.split('SYSTEM """', 1)[1].split('"""', 1)[0] if 'SYSTEM """' in text else ""
    stops = [line.split('"')[1] for line in text.splitlines() if line.startswith("PARAMETER stop ")]
    return template, system, stops


@pytest.mark.parametrize("name", TOKENIZERS)
def test_the_modelfile_renders_what_the_model_was_trained_on(name, go_renderer, family_root):
    path = models.resolve("smollm2-135m-instruct") if name == "smollm2" else str(fixtures.tokenizer_dir(name))
    tokenizer = models.load_tokenizer(path)
    bos = tokenizer.bos_token if adds_bos(tokenizer) else ""  # what llama.cpp puts first itself
    for run_system in (None, "Triage tickets."):
        text, found = ollama.modelfile("m.gguf", tokenizer, run_system)
        assert found is not None, f"{name}: no TEMPLATE written"
        template, system, stops = modelfile_parts(text)
        got = rendered_by_ollama(go_renderer, template, system, CONVERSATIONS)
        for conversation, prompt in zip(CONVERSATIONS, got, strict=True):
            given = conversation[0]["role"] == "system"
            expected = [{"role": "system", "content": run_system}] if run_system and not given else []
            assert bos + prompt == prompt_text(tokenizer, expected + conversation), (name, run_system, conversation)
        assert tokenizer.eos_token in stops and turn_end(tokenizer).split()[0] in stops
    if name in ("smollm2", "qwen2"):  # their templates name the assistant in a default system turn
        assert 'SYSTEM """You are' in ollama.modelfile("m.gguf", tokenizer, None)[0]
