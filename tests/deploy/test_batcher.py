"""Continuous batching with a row per adapter: every answer equals the one `generate` gives the same
request alone, whatever else shares the batch, whenever it joins or leaves."""

from __future__ import annotations

import asyncio

import pytest
import torch

from forgetless.deploy.chat import BASE
from forgetless.deploy.engine import Engine
from forgetless.deploy.job import Job, sample
from forgetless.deploy.stream_text import held_back, new_text
from forgetless.model import loader as models
from forgetless.model.chat_format import prompt_text
from tests.deploy.test_serve import _adapter
from tests.families import fixtures

PROMPTS = ["Say something.", "My parcel 48213 is late, where is it?", "Hi", "Explain LoRA in one long sentence please."]


@pytest.fixture(scope="module")
def engine(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("batch-adapters")
    adapters = {"a": _adapter(tiny_dir, root / "a", 1), "b": _adapter(tiny_dir, root / "b", 2)}
    engine = Engine(tiny_dir, adapters, max_tokens=40, max_prompt_tokens=64, max_batch=4, max_queue=32)
    yield engine
    engine.batcher.stop()


def alone(engine: Engine, adapter: str, ids: list[int], max_new: int) -> list[int]:
    """What transformers' generate answers greedily, the adapter switched on for this request alone."""
    model = engine.model
    with torch.no_grad():
        if adapter == BASE:
            with model.disable_adapter():
                out = model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False)
        else:
            model.set_adapter(adapter)
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False)
    return out[0, len(ids) :].tolist()


async def run_jobs(engine: Engine, jobs: list[Job], gaps: list[float]) -> list[tuple[str, int]]:
    """Submit the jobs `gaps` seconds apart; each one's (text, finish, tokens)."""
    loop = asyncio.get_running_loop()
    results = []

    async def one(job, gap):
        await asyncio.sleep(gap)
        job.loop, job.events = loop, asyncio.Queue()
        engine.batcher.submit(job)
        text = ""
        while True:
            kind, value = await job.events.get()
            if kind == "text":
                text += value
            elif kind == "end":
                return text, value[0]
            else:
                raise AssertionError(value)

    results = await asyncio.gather(*(one(j, g) for j, g in zip(jobs, gaps, strict=True)))
    return results


def test_a_starting_server_makes_every_adapters_head_and_the_stacked_adapters_before_any_request(engine):
    fresh = Engine(engine.base_ref, dict(engine.paths), max_tokens=8, max_prompt_tokens=64)
    try:
        assert fresh.batcher.heads.tokens and sorted(fresh.batcher.heads.kv) == sorted([BASE, "a", "b"])
        assert fresh.batcher.router.stacks and set(fresh.batcher.router.slots) == {BASE, "a", "b"}
    finally:
        fresh.batcher.stop()


def test_rows_of_different_adapters_and_lengths_answer_as_alone(engine):
    tok = engine.tokenizer
    cases = [(m, p, n) for m in (BASE, "a", "b") for p, n in zip(PROMPTS, (40, 7, 23, 12), strict=True)]
    jobs = [Job(m, tok(p, add_special_tokens=False)["input_ids"], n) for m, p, n in cases]
    gaps = [0.0, 0.0, 0.0, 0.01, 0.02, 0.02, 0.05, 0.05, 0.1, 0.1, 0.1, 0.15]  # joins while others decode
    results = asyncio.run(run_jobs(engine, jobs, gaps))
    assert engine.batcher.peak > 1  # rows really shared batches
    for job, (text, finish) in zip(jobs, results, strict=True):
        expected = alone(engine, job.adapter, job.ids, job.max_new)
        assert job.generated == expected, (job.adapter, tok.decode(job.ids))
        assert text == tok.decode(expected, skip_special_tokens=True)
        assert finish == ("stop" if expected[-1] in engine.eos_ids else "length")
    assert len({tuple(j.generated) for j in jobs[::4]}) == 3  # base, a and b answer the same prompt differently


def test_prompts_that_start_with_the_templates_head_prefill_only_the_rest_and_answer_as_alone(engine):
    """The shared head (the default system turn and the user turn's opening) is prefilled once per adapter;
    rows that start with it compute only their own tokens, and every answer is still generate's alone. A
    prompt with a system turn of its own is prefilled whole, beside them or not."""
    tok, head = engine.tokenizer, engine.batcher.heads.tokens
    assert len(head) >= 8 and tok.decode(head).rstrip().endswith("user")  # up to the user's text
    templated = [tok(prompt_text(tok, [{"role": "user", "content": p}]), add_special_tokens=False)["input_ids"]
                 for p in PROMPTS]  # fmt: skip
    own_system = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": PROMPTS[1]}]
    other = tok(prompt_text(tok, own_system), add_special_tokens=False)["input_ids"]
    assert all(t[: len(head)] == head for t in templated) and other[: len(head)] != head
    real, widths = engine.batcher._forward, []

    def forward(ids, mask, *rest):
        widths.append((ids.shape[1], mask.shape[1]))
        return real(ids, mask, *rest)

    engine.batcher._forward = forward
    engine.batcher.heads.clear()
    try:
        four = [Job(m, t, 9) for m, t in zip((BASE, "a", "b", "a"), templated, strict=True)]
        for group in (four, [Job("b", other, 9)], [Job("a", templated[0], 9), Job("b", other, 9)]):
            widths.clear()
            asyncio.run(run_jobs(engine, group, [0.0] * len(group)))
            for job in group:
                assert job.generated == alone(engine, job.adapter, job.ids, job.max_new)
            longest = max(len(j.ids) for j in group)
            if all(j.ids[: len(head)] == head for j in group):  # the heads of base, a and b, then only the rest
                assert sorted(engine.batcher.heads.kv) == sorted({BASE, "a", "b"})
                assert widths[:3] == [(len(head), len(head))] * 3
                assert widths[3] == (longest - len(head), longest)
            else:
                assert (longest, longest) in widths  # prefilled whole
    finally:
        engine.batcher._forward = real


def test_a_mixed_batch_through_the_stacked_adapters_gives_peft_s_per_row_logits(engine):
    """The router's gathered matmuls (deploy/routing.py) against PEFT's own mixed-adapter forward
    (`adapter_names`), rows of base, a and b over left-padded prompts of different lengths."""
    tok, model, router = engine.tokenizer, engine.model, engine.batcher.router
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS[:3]] * 2
    names = [BASE, "a", "b", "b", BASE, "a"]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}
    with torch.no_grad():
        peft = model(**inputs, adapter_names=["__base__" if n == BASE else n for n in names]).logits
        with router.routed(model, names):
            routed = model(**inputs).logits
        plain = model(**inputs).logits  # outside the context: PEFT's forward, one active adapter on every row
        alike = {}  # a batch of one adapter's rows (its own A and s·B), and of base rows (the base layers alone)
        for name in ("a", BASE):
            with router.routed(model, [name] * len(names)):
                alike[name] = model(**inputs).logits
        model.set_adapter("a")
        only_a = model(**inputs).logits
        with model.disable_adapter():
            base = model(**inputs).logits
    assert router.supports(model) and len(router.stacks) > 0
    keep = mask.bool()
    torch.testing.assert_close(routed[keep], peft[keep], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(routed[keep], plain[keep])  # the adapters change the rows they route
    torch.testing.assert_close(alike["a"][keep], only_a[keep], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(alike[BASE][keep], base[keep], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(alike["a"][keep], alike[BASE][keep])
    assert all("forward" not in vars(m) for m in router.stacks)  # PEFT's own forward back after each batch
    engine.batcher.adapters_changed()
    assert not router.stacks  # rebuilt from the adapters loaded at the next batch


def test_a_long_prompt_is_prefilled_in_chunks_while_the_batch_goes_on_decoding(engine):
    """A prompt longer than the batcher's chunk takes a chunk per turn, a decoding step of the running rows
    between two chunks; both answers are still generate's alone."""
    tok, real, calls = engine.tokenizer, engine.batcher._forward, []
    long_ids = tok(" ".join(PROMPTS * 2), add_special_tokens=False)["input_ids"]
    short = Job("a", tok(PROMPTS[2], add_special_tokens=False)["input_ids"], 30)
    long = Job("b", long_ids, 5)

    def forward(ids, mask, positions, cache, names):
        calls.append((names[0] if len(names) == 1 else "batch", ids.shape[1]))
        return real(ids, mask, positions, cache, names)

    engine.batcher._forward, engine.batcher.chunk = forward, 8
    try:
        asyncio.run(run_jobs(engine, [short, long], [0.0, 0.0]))
    finally:
        engine.batcher._forward, engine.batcher.chunk = real, type(engine.batcher).chunk
    chunks = [i for i, (name, width) in enumerate(calls) if name == "b" and width > 1]
    assert len(chunks) == -(-len(long_ids) // 8) and all(calls[i][1] <= 8 for i in chunks)
    assert all(calls[i + 1] == ("a", 1) for i in chunks[:-1])  # the short row decodes between two chunks
    for job in (short, long):
        assert job.generated == alone(engine, job.adapter, job.ids, job.max_new)


def test_sampling_settings_are_per_row(engine):
    ids = engine.tokenizer("Hi", add_special_tokens=False)["input_ids"]
    torch.manual_seed(0)
    greedy, hot = Job("a", ids, 20), Job("a", ids, 20, temperature=2.0, top_p=1.0)
    asyncio.run(run_jobs(engine, [greedy, hot], [0.0, 0.0]))
    assert greedy.generated == alone(engine, "a", ids, 20)
    assert hot.generated != greedy.generated  # a random tiny model at temperature 2 wanders off


def test_sample_and_held_back_text():
    logits = torch.tensor([0.0, 3.0, 1.0])
    assert sample(logits, 0.0, 1.0) == 1 and sample(logits, 1e-300, 1.0) == 1
    torch.manual_seed(0)
    assert {sample(logits, 1.0, 0.5) for _ in range(50)} == {1}  # top_p 0.5 keeps the top token only
    assert held_back("abc\ufffd", []) == 1
    assert held_back("the end is ne", ["near", "x"]) == 2 and held_back("plain", ["zz"]) == 0


ANSWER = "Order 48213 is late!  注文番号 5522 の商品が届きません。 Café ☕🚀 x\n\n  done."


@pytest.mark.parametrize("name", [*fixtures.TOKENIZERS, "smollm2"])
def test_an_answer_decoded_a_token_at_a_time_is_the_whole_decode(name):
    """The server sends each token's text decoded beside the tokens just before it, not the whole answer
    again: spaces, characters split across tokens (Japanese, emoji) and a final end-of-turn token come out
    as one decode of the whole answer gives them, and no piece carries half a character (U+FFFD)."""
    path = models.resolve("smollm2-135m-instruct") if name == "smollm2" else str(fixtures.tokenizer_dir(name))
    if name != "smollm2":
        fixtures.ensure()
    tok = models.load_tokenizer(path)
    ids = [*tok(ANSWER, add_special_tokens=False)["input_ids"], tok.eos_token_id]
    text, start, read, pieces = "", 0, 0, 0
    for n in range(1, len(ids) + 1):
        piece, start, read = new_text(tok, ids[:n], start, read, final=n == len(ids))
        assert "\ufffd" not in piece and read - start <= 8, (n, piece, start, read)  # a few tokens decoded
        text, pieces = text + piece, pieces + bool(piece)
    assert text == tok.decode(ids, skip_special_tokens=True) and pieces > len(ids) // 2


def test_a_first_run_time_adapter_that_brings_its_template_gets_that_templates_head(engine, tmp_path):
    """A server started on the base alone renders with the base's template; the first adapter loaded at run
    time sets its own (engine.register), and the shared head is then that template's, made before any
    request: prompts rendered the new way start from it."""
    fresh = Engine(engine.base_ref, {}, max_tokens=8, max_prompt_tokens=64)
    try:
        old = fresh.batcher.heads.tokens
        ours = "<|im_start|>system\nYou sort support tickets into one of five queues.<|im_end|>\n"
        loop = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        adapter = tmp_path / "templated"
        _adapter(engine.base_ref, adapter, 3)
        (adapter / "chat_template.jinja").write_text(ours + loop + "<|im_start|>assistant\n", encoding="utf-8")
        fresh.register("t", adapter)
        head = fresh.batcher.heads.tokens
        assert head != old and fresh.tokenizer.decode(head).startswith(ours)
        assert sorted(fresh.batcher.heads.kv) == sorted([BASE, "t"])  # made at registration, as at start-up
        prompt = fresh.tokenizer(prompt_text(fresh.tokenizer, [{"role": "user", "content": PROMPTS[1]}]))
        assert fresh.batcher.heads.covers([prompt["input_ids"]]) == len(head)
    finally:
        fresh.batcher.stop()
