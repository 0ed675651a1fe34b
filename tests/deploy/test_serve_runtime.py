"""`forgetless serve` at run time: adapters loaded and unloaded over the API (with a limit on how many
stay in memory), a bounded queue that answers 429, a per-request timeout, and SIGTERM that finishes
the requests in flight before the process exits."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from forgetless.deploy import serve
from tests.deploy.test_serve import CHAT, KEY, _adapter, _post, _stream_raw, ask, prometheus, serving


@pytest.fixture(scope="module")
def adapters(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("runtime-adapters")
    return root, {name: _adapter(tiny_dir, root / name, seed) for name, seed in (("a", 1), ("b", 2), ("c", 3))}


def _delete(url, name, key=KEY):
    req = urllib.request.Request(
        f"{url}/v1/adapters/{name}", method="DELETE", headers={"Authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _load(url, name, path):
    return _post(url, json.dumps({"name": name, "path": str(path)}).encode(), "/v1/adapters")


def test_adapters_load_unload_and_answer_as_if_served_from_the_start(tiny_dir, adapters):
    root, dirs = adapters
    with serving(serve.Engine(tiny_dir, dirs, max_tokens=16, max_prompt_tokens=64), KEY) as url:
        started = {m: ask(url, m, 16) for m in ("base", "a", "b", "c")}
    engine = serve.Engine(tiny_dir, {}, max_tokens=16, max_prompt_tokens=64, adapter_root=str(root))
    with serving(engine, KEY) as url:
        assert ask(url, "base", 16) == started["base"]
        for name in ("a", "b"):
            assert _load(url, name, dirs[name]) == (200, {"name": name, "path": dirs[name], "loaded": True})
        with ThreadPoolExecutor(6) as pool:  # mixed rows of a, b and base at once
            answers = list(pool.map(lambda m: (m, ask(url, m, 16)), ["a", "b", "base"] * 3))
        assert all(text == started[m] for m, text in answers)
        assert _load(url, "a", dirs["a"])[0] == 409
        assert _delete(url, "a") == (200, {"name": "a", "loaded": False})
        code, body = _post(url, json.dumps({"model": "a", "messages": [{"role": "user", "content": "x"}]}).encode())
        assert code == 404 and "model 'a' does not exist" in body["error"]["message"]
        assert ask(url, "b", 16) == started["b"] and ask(url, "base", 16) == started["base"]
        assert _delete(url, "b")[0] == 200 and ask(url, "base", 16) == started["base"]  # last one gone: the base
        assert _delete(url, "zzz")[0] == 404
        health = json.loads(urllib.request.urlopen(f"{url}/health").read())
        assert health["loaded_adapters"] == [] and health["queue_depth"] == 0


def test_adapter_paths_are_checked(tiny_dir, adapters, tmp_path):
    root, dirs = adapters
    engine = serve.Engine(tiny_dir, {}, max_tokens=8, max_prompt_tokens=64, adapter_root=str(root))
    (tmp_path / "empty").mkdir()
    with serving(engine, KEY) as url:
        code, body = _load(url, "x", tmp_path / "empty")
        assert code == 403 and "outside the server's --adapter-root" in body["error"]["message"]
        code, body = _load(url, "x", f"{root}/a/../../{tmp_path.name}")  # escapes by ..
        assert code == 403
        (root / "not-an-adapter").mkdir(exist_ok=True)
        code, body = _load(url, "x", root / "not-an-adapter")
        assert code == 400 and "not an adapter directory" in body["error"]["message"]
        assert _load(url, "base", dirs["a"])[0] == 400 and _load(url, "a/b", dirs["a"])[0] == 400
        assert _delete(url, "a", key="wrong")[0] == 401


def test_a_limit_on_loaded_adapters_unloads_the_least_recently_used_and_reloads_on_demand(tiny_dir, adapters):
    _, dirs = adapters
    with serving(serve.Engine(tiny_dir, dirs, max_tokens=12, max_prompt_tokens=64), KEY) as url:
        expected = {m: ask(url, m, 12) for m in ("a", "b", "c")}
    engine = serve.Engine(tiny_dir, {"a": dirs["a"]}, max_tokens=12, max_prompt_tokens=64, max_adapters=2)
    with serving(engine, KEY) as url:
        assert _load(url, "b", dirs["b"])[0] == 200 and _load(url, "c", dirs["c"])[0] == 200
        assert list(engine.loaded) == ["b", "c"]  # a was used least recently
        for m in ("a", "b", "c", "a", "c"):
            assert ask(url, m, 12) == expected[m]
            assert len(engine.loaded) <= 2 and m in engine.loaded
        assert prometheus(url)["forgetless_adapters_loaded"] == 2


def test_a_full_queue_answers_429_with_retry_after_and_a_timeout_504(tiny_dir):
    engine = serve.Engine(tiny_dir, {}, max_tokens=400, max_prompt_tokens=64, max_batch=1, max_queue=1)
    body = json.dumps({"model": "base", "prompt": "Hello", "max_tokens": 400, "temperature": 0}).encode()
    with serving(engine, KEY) as url:

        def post(_):
            req = urllib.request.Request(
                url + "/v1/completions",
                data=body,
                headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(req) as r:
                    return r.status, None
            except urllib.error.HTTPError as e:
                return e.code, e.headers.get("Retry-After")

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(post, range(8)))
        statuses = [s for s, _ in results]
        assert statuses.count(200) >= 2 and statuses.count(429) >= 1, statuses
        assert all(int(after) >= 1 for s, after in results if s == 429)
        assert prometheus(url)["forgetless_rejected_total"] == statuses.count(429)
        assert post(0)[0] == 200 and prometheus(url)["forgetless_queue_depth"] == 0  # recovered
    engine = serve.Engine(tiny_dir, {}, max_tokens=400, max_prompt_tokens=64, request_timeout=0.05)
    with serving(engine, KEY) as url:
        code, payload = _post(url, body, "/v1/completions")
        assert code == 504 and "timed out" in payload["error"]["message"]


def test_sigterm_finishes_the_requests_in_flight(tiny_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "forgetless", "serve", "--model", tiny_dir, "--port", str(port), "--api-key", KEY,
           "--max-tokens", "2000", "--max-prompt-tokens", "64"]  # fmt: skip
    server = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, text=True)
    try:
        assert "serving" in server.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/health")
                break
            except OSError:
                time.sleep(0.1)
        body = {"model": "base", "messages": [{"role": "user", "content": "Go on."}], "max_tokens": 2000,
                "temperature": 0, "stop": ["zzzzzz"], "stream": True}  # fmt: skip
        with ThreadPoolExecutor(1) as pool:
            reading = pool.submit(_stream_raw, url, body)
            time.sleep(1.0)
            server.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            text = reading.result(timeout=120)
            finished = time.monotonic()
        assert "data: [DONE]" in text
        assert server.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
        assert finished - sent > 0.2, "the answer ended before SIGTERM: nothing was drained"
    finally:
        server.kill()


def test_a_plain_request_whose_client_leaves_frees_its_row(tiny_dir):
    engine = serve.Engine(tiny_dir, {}, max_tokens=2000, max_prompt_tokens=64)
    body = {"model": "base", "messages": [{"role": "user", "content": "Go on."}], "max_tokens": 2000,
            "temperature": 0, "stop": ["zzzzzz"]}  # fmt: skip
    with serving(engine, KEY) as url:
        t0 = time.monotonic()
        alone = _post(url, json.dumps(body).encode())[1]  # how long the whole answer takes
        took = time.monotonic() - t0
        assert alone["usage"]["completion_tokens"] > 200 and took > 1.0
        host, port = url.removeprefix("http://").split(":")
        data = json.dumps(body).encode()
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode()  # fmt: skip
        with socket.create_connection((host, int(port))) as s:
            s.sendall(head + data)
            time.sleep(0.3)
        left = time.monotonic()
        while prometheus(url)["forgetless_cancelled_total"] == 0 and time.monotonic() - left < took:
            time.sleep(0.05)
        m = prometheus(url)
        assert m["forgetless_cancelled_total"] == 1 and m["forgetless_batch_rows"] == 0
        assert time.monotonic() - left < took / 2  # freed well before the answer would have ended


def _own_format_result(tiny_dir, path):
    """A forgetless 'selective' result (its own format: trained tensors of the last layer, changed)."""
    import torch
    from transformers import AutoModelForCausalLM

    from forgetless.adapters import attaching, saved
    from forgetless.config.schema import PeftConfig

    cfg = PeftConfig(method="selective", layers=1)
    model = attaching.attach(
        AutoModelForCausalLM.from_pretrained(tiny_dir), cfg, quantized=False, grad_checkpointing=False
    )
    torch.manual_seed(4)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    saved.save(model, path, cfg, tiny_dir)
    return str(path)


def test_forgetless_own_formats_load_at_run_time_when_they_serve_alone(tiny_dir, adapters, tmp_path):
    _, dirs = adapters
    own = _own_format_result(tiny_dir, tmp_path / "selective")
    with serving(serve.Engine(tiny_dir, {"sel": own}, max_tokens=12, max_prompt_tokens=64), KEY) as url:
        expected = {m: ask(url, m, 12) for m in ("base", "sel")}
    assert expected["base"] != expected["sel"]
    with serving(serve.Engine(tiny_dir, {}, max_tokens=12, max_prompt_tokens=64), KEY) as url:
        assert _load(url, "sel", own)[0] == 200
        assert {m: ask(url, m, 12) for m in ("base", "sel")} == expected
        code, body = _load(url, "a", dirs["a"])
        assert code == 400 and "DELETE it first" in body["error"]["message"]
        assert _delete(url, "sel")[0] == 200 and ask(url, "base", 12) == expected["base"]
        assert _load(url, "a", dirs["a"])[0] == 200
        code, body = _load(url, "sel", own)
        assert code == 400 and "serves alone" in body["error"]["message"]


def test_delete_waits_for_the_requests_in_flight(tiny_dir, adapters):
    _, dirs = adapters
    engine = serve.Engine(tiny_dir, {"a": dirs["a"]}, max_tokens=300, max_prompt_tokens=64)
    body = {"model": "a", "messages": CHAT, "max_tokens": 300, "temperature": 0, "stream": True}
    with serving(engine, KEY) as url:
        expected = ask(url, "a", 300)
        with ThreadPoolExecutor(1) as pool:
            streaming = pool.submit(_stream_raw, url, body)
            while not engine.in_use("a"):
                time.sleep(0.01)
            assert _delete(url, "a")[0] == 200
            assert not engine.in_use("a") and "a" not in engine.loaded
            text = streaming.result(timeout=60)
    pieces = [json.loads(line[6:])["choices"][0]["delta"].get("content", "") for line in text.splitlines()
              if line.startswith("data: {")]  # fmt: skip
    assert "".join(pieces) == expected  # finished with its adapter, not cut and not the base's
