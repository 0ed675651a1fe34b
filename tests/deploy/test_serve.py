"""`forgetless serve` through the official openai client against a live server on 127.0.0.1.

Two adapters with different (random, non-zero) LoRA weights on the tiny model answer
differently; under concurrent load each request must still get its own adapter's answer.
"""

import json
import socket
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import openai
import pytest
import torch
import uvicorn
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from forgetless.deploy import serve

KEY = "test-key"
CHAT = [{"role": "user", "content": "Say something."}]


def _adapter(tiny_dir, path, seed):
    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_dir),
        LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False, lora_alpha=64),
    )
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    adapters = {"a": _adapter(tiny_dir, root / "a", 1), "b": _adapter(tiny_dir, root / "b", 2)}
    engine = serve.Engine(tiny_dir, adapters, max_tokens=32, max_prompt_tokens=64)
    with serving(engine, KEY) as url:
        yield url


@contextmanager
def serving(engine, key):
    """The OpenAI-compatible app on a free local port, in a thread; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(serve.create_app(engine, key), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def client(url, key=KEY):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def ask(url, model, max_tokens=8):
    r = client(url).chat.completions.create(model=model, messages=CHAT, max_tokens=max_tokens, temperature=0)
    return r.choices[0].message.content


def test_models_chat_completions_and_usage(server):
    c = client(server)
    assert [m.id for m in c.models.list().data] == ["base", "a", "b"]
    r = c.chat.completions.create(model="a", messages=CHAT, max_tokens=6, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.completion_tokens <= 6 and r.usage.prompt_tokens > 0
    t = c.completions.create(model="b", prompt="Hello", max_tokens=5, temperature=0)
    assert t.object == "text_completion" and isinstance(t.choices[0].text, str)
    sampled = c.chat.completions.create(model="a", messages=CHAT, max_tokens=5, temperature=0.8, top_p=0.9)
    assert sampled.choices[0].message.content is not None


def test_adapters_answer_differently_and_never_cross_talk(server):
    alone = {m: ask(server, m) for m in ("base", "a", "b")}
    assert len(set(alone.values())) == 3  # the three models answer differently
    jobs = ["a", "b", "base"] * 6
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda m: (m, ask(server, m)), jobs))
    assert all(text == alone[m] for m, text in answers)


def test_streaming_matches_the_full_answer(server):
    full = ask(server, "a", max_tokens=10)
    stream = client(server).chat.completions.create(model="a", messages=CHAT, max_tokens=10, temperature=0, stream=True)
    pieces = [ch.choices[0].delta.content or "" for ch in stream]
    assert len(pieces) > 2 and "".join(pieces) == full
    text = client(server).completions.create(model="b", prompt="Hi", max_tokens=6, temperature=0, stream=True)
    assert sum(1 for _ in text) >= 2


def test_stop_sequences_cut_the_answer(server):
    full = ask(server, "a", max_tokens=16)
    stop = full[3:6]
    assert stop  # the tiny model's answer is long enough to cut
    r = client(server).chat.completions.create(model="a", messages=CHAT, max_tokens=16, temperature=0, stop=[stop])
    assert r.choices[0].message.content == full[: full.index(stop)] and r.choices[0].finish_reason == "stop"


def test_auth(server):
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").models.list()
    req = urllib.request.Request(f"{server}/v1/models")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 401 and json.loads(e.value.read())["error"]["type"] == "authentication_error"
    assert json.loads(urllib.request.urlopen(f"{server}/health").read())["status"] == "ok"


def _post(url, body: bytes, path="/v1/chat/completions"):
    req = urllib.request.Request(
        url + path, data=body, headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"{not json", 400, "malformed JSON"),
        (json.dumps({"model": "nope", "messages": CHAT}).encode(), 404, "model 'nope' does not exist"),
        (json.dumps({"model": "a", "messages": []}).encode(), 400, "messages"),
        (json.dumps({"model": "a", "messages": CHAT, "max_tokens": 999}).encode(), 400, "above this server's limit"),
        (
            json.dumps({"model": "a", "messages": [{"role": "user", "content": "word " * 200}]}).encode(),
            400,
            "at most 64",
        ),
        (json.dumps({"model": "a", "messages": [{"role": "wizard", "content": "x"}]}).encode(), 400, "role"),
        (json.dumps({"model": "a", "messages": CHAT, "temperature": 5}).encode(), 400, "temperature"),
        (json.dumps({"messages": CHAT}).encode(), 400, "model"),
    ],
)
def test_malformed_requests_get_4xx_with_openai_error_body(server, body, status, says):
    code, payload = _post(server, body)
    assert code == status and says in payload["error"]["message"], payload


def prometheus(url) -> dict[str, float]:
    text = urllib.request.urlopen(f"{url}/metrics").read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#" and line
    }


def test_metrics_count_requests_and_latency(server):
    ask(server, "a")
    m = prometheus(server)
    assert m["forgetless_requests_total"] >= 1 and m["forgetless_completion_tokens_total"] > 0
    assert m['forgetless_latency_seconds{quantile="0.5"}'] > 0 and m["forgetless_queue_depth"] == 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "a", "messages": [{"role": "user", "content": "bad \ud800 text"}]}),
        ("/v1/completions", {"model": "a", "prompt": "\udfff"}),
        ("/v1/chat/completions", {"model": "\ud800", "messages": CHAT}),
        ("/v1/chat/completions", {"model": "a", "messages": CHAT, "stop": ["\ud800"]}),
    ],
)
def test_lone_surrogates_get_a_400_not_a_500(server, path, body):
    code, payload = _post(server, json.dumps(body).encode(), path)  # json.dumps writes them as \ud800 escapes
    assert code == 400 and "lone UTF-16 surrogate" in payload["error"]["message"], payload


def _stream_raw(url, body: dict, read_chunks: int | None = None, timeout: float = 60) -> str:
    """A streaming request over a raw socket; closes after `read_chunks` events (None: reads all)."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode()
    got = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(head + data)
        while (chunk := s.recv(4096)) and (read_chunks is None or got.count(b"data: ") < read_chunks):
            got += chunk
    return got.decode("utf-8", "replace")


def test_a_tiny_temperature_answers_greedily_and_never_hangs(server):
    greedy = ask(server, "a", max_tokens=10)
    r = client(server).chat.completions.create(model="a", messages=CHAT, max_tokens=10, temperature=1e-300)
    assert r.choices[0].message.content == greedy
    body = {"model": "a", "messages": CHAT, "max_tokens": 10, "temperature": 5e-324, "stream": True}
    text = _stream_raw(server, body, timeout=30)  # before the fix: nothing, until the client gives up
    assert "data: [DONE]" in text
    pieces = [json.loads(line[6:])["choices"][0]["delta"].get("content", "") for line in text.splitlines()
              if line.startswith("data: {")]  # fmt: skip
    assert "".join(pieces) == greedy
    assert ask(server, "b")  # the server still answers others


def test_a_client_that_disconnects_mid_stream_leaks_nothing_into_other_answers(server):
    """A stream to the base (adapters switched off while it generates) is dropped after its first
    chunk while requests to a and b wait: they must still get their own adapters' answers."""
    alone = {m: ask(server, m, max_tokens=32) for m in ("a", "b")}
    body = {"model": "base", "messages": CHAT, "max_tokens": 32, "temperature": 0, "stream": True}
    for _ in range(4):
        with ThreadPoolExecutor(5) as pool:
            dropped = pool.submit(_stream_raw, server, body, 1)
            time.sleep(0.05)
            waiting = [pool.submit(lambda m: (m, ask(server, m, max_tokens=32)), m) for m in ("a", "b", "a", "b")]
            dropped.result()
            answers = [f.result() for f in waiting]
        assert all(text == alone[m] for m, text in answers), answers


def test_openai_details_finish_reason_role_n_content_type_and_param(server):
    body = {"model": "a", "messages": CHAT, "max_tokens": 3, "temperature": 0, "stream": True, "stop": ["zzzz"]}
    chunks = [json.loads(line[6:]) for line in _stream_raw(server, body).splitlines() if line.startswith("data: {")]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"  # cut at max_tokens, as without streaming
    code, payload = _post(server, json.dumps({"model": "a", "messages": CHAT, "n": 2}).encode())
    assert code == 400 and "one choice per request" in payload["error"]["message"]
    req = urllib.request.Request(
        server + "/v1/chat/completions",
        data=json.dumps({"model": "a", "messages": CHAT}).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "text/plain"},
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 400 and "Content-Type: application/json" in json.loads(e.value.read())["error"]["message"]
    code, payload = _post(server, json.dumps({"model": "a", "prompt": "word " * 200}).encode(), "/v1/completions")
    assert code == 400 and payload["error"]["param"] == "prompt"
    # /health and /metrics stay open with a key: load balancers and Prometheus scrapers carry none, and
    # they show no paths, prompts or answers
    assert urllib.request.urlopen(f"{server}/health").status == 200
    assert urllib.request.urlopen(f"{server}/metrics").status == 200


def test_what_a_request_may_allocate_is_bounded(server):
    code, payload = _post(server, json.dumps({"model": "a", "prompt": "x" * 200_000}).encode(), "/v1/completions")
    assert code == 413 and "request body is over" in payload["error"]["message"]
    code, payload = _post(server, json.dumps({"model": "a", "prompt": "x" * 5_000}).encode(), "/v1/completions")
    assert code == 400 and "5000 characters" in payload["error"]["message"]  # refused before tokenizing
    code, payload = _post(server, json.dumps({"model": "a", "messages": CHAT, "stop": ["x"] * 5}).encode())
    assert code == 400 and payload["error"]["param"] == "stop"


def _hostile(rng) -> tuple[str, bytes, str]:
    """One seeded hostile request: (path, body, content type)."""
    junk = [
        "",
        "\ud800",
        "\x00",
        "💥" * 50,
        "a" * 3000,
        "<|im_end|>",
        "{{ raise }}",
        "注文" * 20,
        None,
        1e308,
        -1,
        [],
        {},
    ]
    pick = lambda: rng.choice(junk)  # noqa: E731
    model = rng.choice(["a", "b", "base", "nope", "", None, 7, "\ud800"])
    kind = rng.randrange(6)
    if kind == 0:
        return (
            "/v1/chat/completions",
            bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))),
            "application/json",
        )
    if kind == 1:
        messages = [{"role": rng.choice(["user", "system", "assistant", "x", None]), "content": pick()}
                    for _ in range(rng.randrange(0, 4))]  # fmt: skip
        body = {"model": model, "messages": messages}
    elif kind == 2:
        body = {"model": model, "prompt": pick()}
    else:
        body = {
            "model": rng.choice(["a", "b", "base"]),
            "messages": [{"role": "user", "content": rng.choice(junk[:8])}],
        }
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    for key, values in (
        ("max_tokens", [1, 8, 32, 0, -5, 10**12, "8", None]),
        ("temperature", [0, 0.7, 1e-300, 5e-324, 2, -1, 3, float("inf")]),
        ("top_p", [1, 0.5, 0, 1e-9, 2]),
        ("stop", [None, "", ".", ["a", "b"], [""], "\ud800", ["x"] * 9]),
        ("stream", [False, True, "yes", None]),
        ("n", [1, 2, 0]),
    ):
        if rng.random() < 0.4:
            body[key] = rng.choice(values)
    text = json.dumps(body, allow_nan=True)  # inf travels as Infinity, which Python's JSON reads
    return path, text.encode(), rng.choice(["application/json"] * 5 + ["text/plain"])


def test_a_seeded_fuzz_gets_no_5xx_no_hang_and_no_cross_talk(server):
    import random

    before = {m: ask(server, m) for m in ("base", "a", "b")}
    rng = random.Random(1234)
    requests = [_hostile(rng) for _ in range(300)]

    def send(item):
        path, body, ctype = item
        req = urllib.request.Request(
            server + path, data=body, headers={"Authorization": f"Bearer {KEY}", "Content-Type": ctype}
        )
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                r.read()
                return r.status, time.monotonic() - t0
        except urllib.error.HTTPError as e:
            e.read()
            return e.code, time.monotonic() - t0

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, requests))
    statuses = sorted({s for s, _ in results})
    assert all(s < 500 for s, _ in results), statuses
    assert max(t for _, t in results) < 60 and 200 in statuses and 400 in statuses
    assert {m: ask(server, m) for m in ("base", "a", "b")} == before
