"""`forgetless serve` at its edges: requests are never dropped or left hanging (an adapter that cannot
share the batch, a failed prefill, a client that leaves, a deadline in the queue), adapters never change
under a request (a DELETE and a POST of one name at once), templates and bases are checked, and a
keyless server on loopback answers no web page."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from forgetless.deploy import serve
from forgetless.deploy.engine import ApiError, Engine
from forgetless.deploy.job import Job
from forgetless.deploy.stream_text import held_back
from tests.deploy.test_serve import CHAT, KEY, _adapter, _post, ask, serving
from tests.deploy.test_serve_runtime import _delete, _load


@pytest.fixture(scope="module")
def dirs(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("edge-adapters")
    return root, {name: _adapter(tiny_dir, root / name, seed) for name, seed in (("a", 1), ("b", 2))}


@pytest.fixture
def engine(tiny_dir, dirs):
    engine = Engine(tiny_dir, dirs[1], max_tokens=400, max_prompt_tokens=64, max_batch=4, max_queue=16)
    engine.eos_ids = set()  # rows run to their length: a random tiny model could otherwise end one early
    yield engine
    engine.batcher.stop()


def ids(engine, text="Say something."):
    return engine.tokenizer(text, add_special_tokens=False)["input_ids"]


async def _events(job: Job, seconds: float = 30) -> list:
    """Every event of a submitted job, until its end or error; a job that hangs fails the test."""
    out = []
    while True:
        kind, value = await asyncio.wait_for(job.events.get(), seconds)
        out.append((kind, value))
        if kind != "text":
            return out


def _submit_together(engine, jobs: list[Job], loop) -> None:
    """All jobs in the queue before the model's thread looks at it (one admission round)."""
    for job in jobs:
        job.loop, job.events = loop, asyncio.Queue()
        engine.hold(job)
    with engine.batcher.wake:
        engine.batcher.waiting.extend(jobs)
        engine.batcher.wake.notify()


def test_an_adapter_that_cannot_share_the_batch_never_drops_the_requests_admitted_with_it(engine):
    """Jobs a, a, b, a arrive together; loading b makes the model unbatchable (as a DoRA adapter
    does). The two a jobs collected for prefill that round were dropped: no event, `inflight` stuck."""
    real = engine.ensure_loaded
    alone = {"on": False}

    def ensure(name):
        real(name)
        alone["on"] = alone["on"] or name == "b"

    engine.ensure_loaded = ensure
    engine.batchable = lambda: not alone["on"]

    async def go():
        jobs = [Job(name, ids(engine), 6) for name in ("a", "a", "b", "a")]
        _submit_together(engine, jobs, asyncio.get_running_loop())
        return jobs, await asyncio.gather(*(_events(j) for j in jobs))

    jobs, results = asyncio.run(go())
    assert [r[-1][0] for r in results] == ["end"] * 4
    assert all(j.finished for j in jobs) and not engine.in_use("a") and not engine.in_use("b")


def test_a_failed_prefill_fails_its_rows_and_the_batch_goes_on(engine):
    """A prefill that raises used to leave the jobs being prefilled without an event (the error handler
    only told the rows already decoding)."""
    real = engine.batcher._forward
    broken = {"left": 1}

    def forward(ids_, *args, **kwargs):
        if ids_.shape[1] > 1 and broken["left"]:  # a prefill (more than one new token per row)
            broken["left"] -= 1
            raise RuntimeError("out of memory in the prefill")
        return real(ids_, *args, **kwargs)

    engine.batcher._forward = forward

    async def go():
        loop = asyncio.get_running_loop()
        failing = [Job("a", ids(engine), 5), Job("b", ids(engine), 5)]
        _submit_together(engine, failing, loop)
        first = await asyncio.gather(*(_events(j) for j in failing))
        later = Job("a", ids(engine), 5)
        _submit_together(engine, [later], loop)
        return first, await _events(later)

    first, later = asyncio.run(go())
    assert [r[-1] for r in first] == [("error", (500, "generation failed: out of memory in the prefill"))] * 2
    assert later[-1][0] == "end"
    assert not engine.in_use("a") and not engine.in_use("b")


def test_an_adapter_counts_as_in_use_until_its_row_has_left_the_batch(engine):
    """A stream client that goes away: the server's generator ends at once, but the row decodes until
    the model's thread drops it. The adapter used to be released at once, so a DELETE or an LRU eviction
    (both run in the model's thread between two steps) could unload it under the row and fail the whole
    batch with a 500. Sampled where those run: between steps."""
    engine.metrics = serve.Metrics()

    async def go():
        job = Job("a", ids(engine), 300)
        stream = serve.events(engine, job, None)
        await anext(stream)  # the first token: the row is in the batch
        started, gate = threading.Event(), threading.Event()

        def paused():  # the model's thread, between two steps, while the client leaves
            started.set()
            gate.wait(10)
            return engine.in_use("a"), job in engine.batcher.active

        first = engine.batcher.call(paused)
        await asyncio.to_thread(started.wait, 10)
        await stream.aclose()  # the client left
        gate.set()
        seen = [await asyncio.wrap_future(first)]
        assert seen[0] == (True, True)
        for _ in range(50):
            between_steps = engine.batcher.call(lambda: (engine.in_use("a"), job in engine.batcher.active))
            seen.append(await asyncio.wrap_future(between_steps))
            if not seen[-1][1]:
                return job, seen
        raise AssertionError("the row never left")

    job, seen = asyncio.run(go())
    assert job.finished and seen[-1] == (False, False)
    assert all(used for used, in_batch in seen if in_batch), "released while its row was still decoding"


def test_queued_requests_whose_client_left_or_whose_deadline_passed_free_their_slots(engine):
    """With one row busy, cancelled and expired requests used to wait in the queue (holding slots that
    made others get 429) until admitted; --request-timeout did not count time in the queue."""
    engine.batcher.max_batch = 1

    async def go():
        loop = asyncio.get_running_loop()
        busy = Job("a", ids(engine), 300)
        _submit_together(engine, [busy], loop)
        await busy.events.get()  # decoding
        left = [Job("a", ids(engine), 5) for _ in range(3)]
        late = Job("b", ids(engine), 5, deadline=time.monotonic() + 0.3)
        _submit_together(engine, [*left, late], loop)
        for job in left:
            job.cancelled.set()
        ended = await asyncio.gather(*(_events(j, 10) for j in [*left, late]))
        for _ in range(100):  # the queue is rebuilt right after the last of those events went out
            if engine.batcher.depth()[0] == 0:
                break
            await asyncio.sleep(0.01)
        depth = engine.batcher.depth()
        busy.cancelled.set()
        await _events(busy)
        return busy, ended, depth

    busy, ended, (waiting, active) = asyncio.run(go())
    assert [e[-1][0] for e in ended] == ["end", "end", "end", "error"]
    assert ended[-1][-1][1][0] == 504
    assert (waiting, active) == (0, 1) and busy.finished


def test_a_stop_string_never_leaks_while_a_character_is_still_arriving():
    """Text 'Yes.\\ufffd' (a multi-byte character half decoded) with stop '.é' (é still on its way):
    the '.' must stay unsent with the partial character (only the U+FFFD was held back)."""
    assert held_back("Yes.\ufffd", [".é"]) == 2
    assert held_back("Yes.\ufffd\ufffd", []) == 2
    assert held_back("Yes.", [".é"]) == 1 and held_back("Yes", [".é"]) == 0


def test_completions_get_the_bos_their_model_needs_and_chat_prompts_keep_the_templates():
    """/v1/completions tokenized without special tokens: Llama-3 and Gemma lost their BOS."""
    calls = []

    class Tok:
        bos_token = "<s>"

        def __call__(self, text, add_special_tokens):
            calls.append(add_special_tokens)
            return {"input_ids": [1] * add_special_tokens + [5, 6]}

    fake = SimpleNamespace(adapters={}, max_tokens=8, max_prompt_tokens=64, tokenizer=Tok())
    req = SimpleNamespace(model="base", max_tokens=4, stop=None, temperature=0, top_p=1)
    assert Engine.job(fake, req, "Once upon", chat=False).ids == [1, 5, 6]
    assert Engine.job(fake, req, "<s>Once upon", chat=False).ids == [5, 6]  # written by the client already
    assert Engine.job(fake, req, "<s>rendered", chat=True).ids == [5, 6]
    with pytest.raises(ApiError, match="empty string"):
        Engine.job(fake, SimpleNamespace(**{**vars(req), "stop": ["", "x"]}), "x", chat=False)


def test_templates_that_refuse_a_conversation_and_models_without_one_get_a_400(tiny_dir):
    engine = Engine(tiny_dir, {}, max_tokens=8, max_prompt_tokens=64)
    with serving(engine, KEY) as url:
        engine.tokenizer.chat_template = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
        code, body = _post(url, json.dumps({"model": "base", "messages": CHAT}).encode())
        assert code == 400 and "roles must alternate" in body["error"]["message"], body
        engine.tokenizer.chat_template = None
        code, body = _post(url, json.dumps({"model": "base", "messages": CHAT}).encode())
        assert code == 400 and "no chat template" in body["error"]["message"], body
        code, body = _post(
            url, json.dumps({"model": "base", "prompt": "Hi", "max_tokens": 2}).encode(), "/v1/completions"
        )
        assert code == 200
        code, body = _post(url, json.dumps({"model": "base", "prompt": "Hi", "stop": [""]}).encode(), "/v1/completions")
        assert code == 400 and body["error"]["param"] == "stop"


def test_run_time_adapters_are_checked_for_base_model_template_and_links(tiny_dir, dirs, tmp_path):
    root, adapters = dirs
    engine = Engine(tiny_dir, {"a": adapters["a"]}, max_tokens=8, max_prompt_tokens=64, adapter_root=str(root))
    other_base = root / "other-base"
    _adapter(tiny_dir, other_base, 3)
    cfg = json.loads((other_base / "adapter_config.json").read_text())
    (other_base / "adapter_config.json").write_text(json.dumps(cfg | {"base_model_name_or_path": "org/other-7b"}))
    other_template = root / "other-template"
    _adapter(tiny_dir, other_template, 4)
    (other_template / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    (root / "leak").mkdir()  # inside the root, its weights a link to a file outside it
    for f in os.listdir(adapters["b"]):
        target = root / "leak" / f
        if f.endswith(".safetensors"):
            (tmp_path / f).write_bytes((root / "b" / f).read_bytes())
            target.symlink_to(tmp_path / f)
        else:
            target.write_bytes((root / "b" / f).read_bytes())
    with serving(engine, KEY) as url:
        code, body = _load(url, "x", other_base)
        assert code == 400 and "was trained on org/other-7b" in body["error"]["message"], body
        code, body = _load(url, "y", other_template)
        assert code == 400 and "another chat template" in body["error"]["message"], body
        code, body = _load(url, "z", root / "leak")
        assert code == 403 and "links outside" in body["error"]["message"], body
        code, body = _load(url, "n", str(root / "b") + "\x00x")
        assert code == 400 and "NUL" in body["error"]["message"], body
        assert _load(url, "b", root / "b")[0] == 200 and ask(url, "b")


def test_a_delete_and_a_post_of_one_name_at_once_never_swap_weights_under_a_request(tiny_dir, dirs):
    """DELETE a waits for a request of a; a POST of a meanwhile loaded new weights into the adapter that
    request was using (and DELETE then unloaded them: later requests got KeyError, a 500). Now: 409, and
    once the DELETE is done, a loads again and answers as before."""
    root, adapters = dirs
    engine = Engine(tiny_dir, dict(adapters), max_tokens=8, max_prompt_tokens=64, adapter_root=str(root))
    with serving(engine, KEY) as url, ThreadPoolExecutor(1) as pool:
        before = ask(url, "a")
        request = Job("a", [], 1)
        engine.hold(request)  # a request of a, accepted and not yet released by the batcher
        deleting = pool.submit(_delete, url, "a")
        while "a" not in engine.busy:
            time.sleep(0.01)
        code, body = _load(url, "a", root / "b")
        assert code == 409 and "being loaded or removed" in body["error"]["message"], body
        assert not deleting.done()
        request.close()  # its row has left
        assert deleting.result(timeout=60)[0] == 200
        assert _load(url, "a", root / "a")[0] == 200 and ask(url, "a") == before


def _raw(url: str, headers: dict, body: bytes | None = None, path: str = "/v1/models") -> tuple[int, str]:
    req = urllib.request.Request(url + path, data=body, headers=headers, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_a_keyless_server_answers_programs_on_this_machine_but_no_web_page(tiny_dir):
    """DNS rebinding (a page's own host name pointing at 127.0.0.1) and cross-site no-cors POSTs
    (text/plain, or no Content-Type at all, which was parsed as JSON) reached a keyless server."""
    engine = Engine(tiny_dir, {}, max_tokens=8, max_prompt_tokens=64)
    body = json.dumps({"model": "base", "messages": CHAT, "max_tokens": 2}).encode()
    json_type = {"Content-Type": "application/json"}
    with serving(engine, None) as url:
        port = url.rsplit(":", 1)[1]
        assert _raw(url, {})[0] == 200
        assert _raw(url, {"Host": f"localhost:{port}"})[0] == 200
        assert _raw(url, {"Origin": f"http://127.0.0.1:{port}"})[0] == 200
        code, text = _raw(url, {"Host": f"evil.example:{port}"})
        assert code == 403 and "not a loopback name" in text
        code, text = _raw(url, {"Origin": "https://evil.example"}, body, "/v1/chat/completions")
        assert code == 403 and "evil.example" in text
        assert _raw(url, {"Origin": "null", **json_type}, body, "/v1/chat/completions")[0] == 403
        assert _raw(url, {"Content-Type": "text/plain"}, body, "/v1/chat/completions")[0] == 400
        assert _raw(url, {"Content-Type": ""}, body, "/v1/chat/completions")[0] == 400
        assert _raw(url, json_type, body, "/v1/chat/completions")[0] == 200


def test_the_ui_without_a_key_answers_no_web_page(tmp_path):
    """`forgetless ui` on loopback without a key: a rebound host name or another site's page gets 403
    (a page could start runs on local files and read snippets back); this machine's browser gets the page."""
    pytest.importorskip("gradio", reason="forgetless[ui] is not installed")
    import subprocess
    import sys

    from tests.ui.browser import free_port, wait_for

    port = free_port()
    cmd = [sys.executable, "-m", "forgetless", "ui", "--runs", str(tmp_path), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + "/", proc)
        assert _raw(url, {}, path="/config")[0] == 200
        assert _raw(url, {"Origin": url}, path="/config")[0] == 200
        code, text = _raw(url, {"Host": f"rebound.example:{port}"}, path="/config")
        assert code == 403 and "not a loopback name" in text
        join = json.dumps({"data": [], "fn_index": 0, "session_hash": "x"}).encode()
        headers = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
        assert _raw(url, headers, join, "/gradio_api/queue/join")[0] == 403
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_seeded_fuzz_of_adapter_loads_deletes_and_early_disconnects_gets_no_5xx(tiny_dir, dirs):
    """Adapters c and d loaded and deleted at random while requests name them and other clients leave
    before their first token: every answer is a 2xx or a 4xx (404 for a name being removed, 409 for a
    name being changed), nothing hangs, and a and the base answer as before."""
    import random
    import socket

    root, adapters = dirs
    for name, seed in (("c", 5), ("d", 6)):
        if not (root / name).is_dir():
            _adapter(tiny_dir, root / name, seed)
    engine = Engine(tiny_dir, {"a": adapters["a"]}, max_tokens=16, max_prompt_tokens=64, adapter_root=str(root))
    rng = random.Random(7)

    def leave_early(url):
        host, port = url.removeprefix("http://").split(":")
        data = json.dumps({"model": rng.choice(["a", "c", "base"]), "messages": CHAT, "stream": True}).encode()
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(head.encode() + data)  # and gone before the first token
        return 200

    def act(url, what):
        kind, name = what
        if kind == "load":
            return _load(url, name, root / name)[0]
        if kind == "delete":
            return _delete(url, name)[0]
        if kind == "leave":
            return leave_early(url)
        body = {"model": name, "messages": CHAT, "max_tokens": rng.randint(1, 16), "temperature": 0}
        return _post(url, json.dumps(body).encode())[0]

    plan = [
        (rng.choice(["load", "delete", "ask", "ask", "leave"]), rng.choice(["c", "d", "a", "base"])) for _ in range(80)
    ]
    plan = [(k, n) for k, n in plan if not (k in ("load", "delete") and n in ("a", "base"))]
    with serving(engine, KEY) as url:
        before = {m: ask(url, m) for m in ("a", "base")}
        with ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(lambda w: act(url, w), plan, timeout=300))
        assert all(s < 500 for s in statuses), sorted(set(statuses))
        assert {200, 404}.issubset(set(statuses)) or 409 in statuses
        deadline = time.monotonic() + 30
        while any(engine.in_use(n) for n in ("a", "c", "d", "base")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(engine.in_use(n) for n in ("a", "c", "d", "base"))
        assert {m: ask(url, m) for m in ("a", "base")} == before


def test_prefill_and_decode_compute_the_last_positions_logits_only(engine):
    """8 rows × 2,048 tokens × a 128k vocabulary is ~8 GB of fp32 logits when every position gets them."""
    real, shapes = engine.batcher._forward, []

    def forward(*args, **kwargs):
        out = real(*args, **kwargs)
        shapes.append((args[0].shape[1], out.logits.shape[1]))
        return out

    engine.batcher._forward = forward

    async def go():
        jobs = [Job("a", ids(engine, "A longer prompt with several tokens in it."), 3), Job("b", ids(engine), 3)]
        _submit_together(engine, jobs, asyncio.get_running_loop())
        return await asyncio.gather(*(_events(j) for j in jobs))

    asyncio.run(go())
    assert shapes and shapes[0][0] > 1  # a prefill went through
    assert all(kept == 1 for _, kept in shapes)
