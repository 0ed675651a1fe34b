"""`forgetless serve`: one base model and any number of named adapters behind an OpenAI-compatible API.

Endpoints: GET /v1/models, POST /v1/chat/completions, POST /v1/completions (both with
`stream: true` as server-sent events), GET/POST /v1/adapters and DELETE /v1/adapters/NAME (load and
unload at run time), GET /health, GET /metrics (Prometheus text). The request's `model` picks an
adapter by name, or `base` for the model without adapters.

Requests are decoded together, each row with its own adapter (deploy/batcher.py: continuous
batching with a key/value cache). Beyond --max-queue waiting requests the server answers 429 with
Retry-After; a request past --request-timeout gets 504; a client that disconnects frees its row at
the next token; SIGTERM stops accepting connections and finishes the requests in flight. With no
API key configured the server binds to 127.0.0.1 only; with a key (`--api-key` or
FORGETLESS_API_KEY), a request without `Authorization: Bearer KEY` gets 401. Bad requests get a
4xx with an OpenAI-style error body.

For GPU-scale multi-LoRA serving, the same adapter directories (plain PEFT format) load in
vLLM: `vllm serve BASE --enable-lora --lora-modules support=runs/a/adapter legal=runs/b/adapter`.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
import uuid
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from forgetless.deploy.engine import CHARS_PER_TOKEN, Engine, Metrics
from forgetless.deploy.guard import LOOPBACK, LocalOnly
from forgetless.deploy.job import QueueFull
from forgetless.deploy.openai_schemas import AdapterRequest, ApiError, ChatRequest, CompletionRequest, Sampling, choice
from forgetless.errors import UserError
from forgetless.model.chat_format import prompt_text

__all__ = ["LOOPBACK", "ApiError", "Engine", "create_app", "run"]


async def events(engine: Engine, job, request: Request | None):
    """The job's events as they come; a disconnected client or a dropped stream cancels the job. The
    adapter counts as in use from here until the batcher releases the job (its row has left)."""
    job.loop, job.events = asyncio.get_running_loop(), asyncio.Queue()
    if engine.request_timeout:
        job.deadline = time.monotonic() + engine.request_timeout
    engine.hold(job)
    try:
        engine.batcher.submit(job)
    except QueueFull:
        job.close()  # never queued: released here
        engine.metrics.rejected += 1
        waiting, active = engine.batcher.depth()
        wait = max(1, math.ceil((engine.metrics.quantile(0.5) or 1.0) * (waiting + 1) / max(1, active)))
        raise ApiError(429, f"the server is busy ({waiting} requests queued); retry later", kind="rate_limit_error",
                       headers={"Retry-After": str(wait)}) from None  # fmt: skip
    try:
        while True:
            kind, value = await _next(job, request)
            if kind == "error":
                engine.metrics.timeouts += value[0] == 504
                raise ApiError(value[0], value[1], kind="timeout" if value[0] == 504 else "server_error")
            yield kind, value
            if kind == "end":
                engine.metrics.tokens += value[1]
                engine.metrics.cancelled += value[0] == "cancelled"
                return
    finally:
        job.cancelled.set()  # no-op for a finished job; the batcher frees the row of an abandoned one
        engine.batcher.nudge()


GRACE = 5.0  # seconds past a request's deadline before the server side gives up waiting for the batcher


async def _next(job, request: Request | None):
    """The job's next event. A plain answer looks for a disconnect at least every quarter second (a
    stream's generator is cancelled by Starlette when the client goes). Past its deadline and a grace
    the request ends with 504 whatever the batcher does, so no client waits forever."""
    while True:
        if request is not None and not job.cancelled.is_set() and time.monotonic() - job.checked > 0.25:
            job.checked = time.monotonic()
            if await request.is_disconnected():
                job.cancelled.set()  # the batcher frees the row and sends its "cancelled" end
        getter = asyncio.ensure_future(job.events.get())
        done, _ = await asyncio.wait({getter}, timeout=0.25)
        if done:
            return getter.result()
        getter.cancel()  # an item that arrives now stays in the queue for the next get
        if job.deadline is not None and time.monotonic() > job.deadline + GRACE:
            return "error", (504, "the request timed out (the server's --request-timeout)")


async def respond(engine: Engine, req: Sampling, prompt: str, chat: bool, request: Request):
    """The answer to a chat or completion request: one JSON body, or a server-sent event stream."""
    rid, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", int(time.time())
    kind = "chat.completion" if chat else "text_completion"
    job = engine.job(req, prompt, chat)  # a bad request fails here, before any status line goes out
    head = {
        "id": rid,
        "object": kind + (".chunk" if chat and req.stream else ""),
        "created": created,
        "model": req.model,
    }
    if req.stream:
        stream = events(engine, job, None)
        first = await anext(stream)  # queue full: a 429, not a 200 with an error inside

        async def sse():
            if chat:  # OpenAI's first chunk names the role
                start = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                yield f"data: {json.dumps(head | {'choices': [start]})}\n\n"
            try:
                async for what, value in _chain(first, stream):
                    piece, finish = (value, None) if what == "text" else (None, value[0])
                    yield f"data: {json.dumps(head | {'choices': [choice(chat, piece, finish, delta=True)]})}\n\n"
            except ApiError as e:  # the 200 status line has gone out: the error travels as an event
                yield f"data: {json.dumps(e.body())}\n\n"
                return
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")
    text, finish, n_new = "", None, 0
    async for what, value in events(engine, job, request):
        if what == "text":
            text += value
        else:
            finish, n_new = value
    usage = {"prompt_tokens": len(job.ids), "completion_tokens": n_new, "total_tokens": len(job.ids) + n_new}
    return head | {"choices": [choice(chat, text, finish)], "usage": usage}


async def _chain(first, rest):
    yield first
    async for item in rest:
        yield item


class AuthAndMetrics:
    """The API key check and the request counters, as plain ASGI middleware: Starlette's
    BaseHTTPMiddleware would hide a client's disconnect from the request (Request.is_disconnected)."""

    def __init__(self, app, engine: Engine, api_key: str | None):
        self.app, self.engine, self.api_key = app, engine, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        metrics, headers = self.engine.metrics, dict(scope["headers"])
        if self.api_key and headers.get(b"authorization", b"") != f"Bearer {self.api_key}".encode():
            metrics.errors += 1
            err = ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)", kind="authentication_error")
            return await JSONResponse(err.body(), status_code=401)(scope, receive, send)
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if scope["method"] == "POST" and content_type != b"application/json":
            # a body without one was read as JSON: a web page's no-cors POST (text/plain) must not be
            metrics.errors += 1
            err = ApiError(400, "the body must be a JSON object, sent with Content-Type: application/json", "body")
            return await JSONResponse(err.body(), status_code=400)(scope, receive, send)
        # what a request may make the server hold: a body a little above the longest prompt accepted
        limit = 4 * CHARS_PER_TOKEN * self.engine.max_prompt_tokens + 65536
        too_large = ApiError(413, f"the request body is over {limit} bytes (see --max-prompt-tokens)", param="body")
        if int(headers.get(b"content-length", b"0") or 0) > limit:
            metrics.errors += 1
            return await JSONResponse(too_large.body(), status_code=413)(scope, receive, send)
        t0, status, received = time.perf_counter(), [0], [0]

        async def counted():  # a chunked body has no length up front
            message = await receive()
            received[0] += len(message.get("body", b""))
            if received[0] > limit:
                raise too_large
            return message

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, counted, send_and_note)
        except ApiError as e:
            if status[0]:
                raise
            await JSONResponse(e.body(), status_code=e.status)(scope, receive, send_and_note)
        finally:
            if scope["method"] == "POST":  # counted when the answer (or the stream) has ended
                metrics.requests += 1
                metrics.errors += status[0] >= 400 or status[0] == 0  # 0: no answer started
                metrics.latencies.append(time.perf_counter() - t0)


def create_app(engine: Engine, api_key: str | None):
    engine.metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app):
        yield
        engine.batcher.stop()  # after uvicorn has finished the requests in flight (SIGTERM drains)

    app = FastAPI(title="forgetless", docs_url=None, redoc_url=None, lifespan=lifespan)

    app.add_middleware(AuthAndMetrics, engine=engine, api_key=api_key)
    if not api_key:  # loopback without a key: not for web pages (deploy/guard.py); added last, runs first
        app.add_middleware(LocalOnly)

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or None
        message = f"{where}: {first.get('msg')}"
        if first.get("type") == "json_invalid":
            message = "malformed JSON body"
        elif where is None:  # the body as a whole is not a JSON object (no Content-Type: application/json ...)
            message = "the body must be a JSON object, sent with Content-Type: application/json"
        elif where == "n":
            message = "n: one choice per request is supported; send n requests for n answers"
        return JSONResponse(ApiError(400, message, param=where).body(), status_code=400)

    _model_routes(app, engine)
    _adapter_routes(app, engine)
    return app


def _model_routes(app: FastAPI, engine: Engine) -> None:
    @app.get("/health")
    async def health():
        waiting, active = engine.batcher.depth()
        return {
            "status": "ok",
            "base_model": engine.base_ref,
            "models": engine.names,
            "loaded_adapters": list(engine.loaded),
            "queue_depth": waiting,
            "batch_rows": active,
        }

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(engine.metrics.prometheus(engine), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        now = int(time.time())
        return {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": now, "owned_by": "forgetless"} for n in engine.names],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        messages = [m.model_dump() for m in req.messages]
        if messages[-1]["role"] == "assistant":
            raise ApiError(400, "the last message must be from the user (or system)", param="messages")
        if not getattr(engine.tokenizer, "chat_template", None):
            raise ApiError(400, "this model has no chat template: use /v1/completions with a plain prompt", "messages")
        try:
            prompt = prompt_text(engine.tokenizer, messages)
        except UserError as e:  # the template refuses the roles (Mistral's and Gemma-2's alternate strictly)
            raise ApiError(400, str(e), param="messages") from None
        return await respond(engine, req, prompt, True, request)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        if not req.prompt:
            raise ApiError(400, "prompt is empty", param="prompt")
        return await respond(engine, req, req.prompt, False, request)


def _adapter_routes(app: FastAPI, engine: Engine) -> None:
    @app.get("/v1/adapters")
    async def adapters():
        return {
            "adapters": [{"name": n, "path": str(p), "loaded": n in engine.loaded} for n, p in engine.adapters.items()]
        }

    @app.post("/v1/adapters")
    async def load_adapter(req: AdapterRequest):
        with engine.changing(req.name):  # a second POST or a DELETE of this name meanwhile: 409
            directory = engine.check_new_adapter(req.name, req.path)
            try:
                await asyncio.wrap_future(engine.batcher.call(lambda: engine.register(req.name, directory)))
            except Exception as e:  # PEFT's own refusal (a different base, a broken file): the caller's to fix
                raise ApiError(400, f"could not load {directory}: {e}", param="path") from None
        return {"name": req.name, "path": str(directory), "loaded": True}

    @app.delete("/v1/adapters/{name}")
    async def unload_adapter(name: str):
        with engine.changing(name):
            engine.check_removable(name)
            del engine.adapters[name]  # new requests for it get 404 from here on
            while engine.in_use(name):  # the ones already accepted finish first
                await asyncio.sleep(0.05)
            await asyncio.wrap_future(engine.batcher.call(lambda: engine.forget(name)))
        return {"name": name, "loaded": False}


def named_adapters(items: list[str]) -> dict[str, str]:
    """--adapter NAME=DIR (or a bare DIR, named adapter1, adapter2 ...)."""
    out = {}
    for i, item in enumerate(items):
        name, sep, ref = item.partition("=")
        out[name if sep else f"adapter{i + 1}"] = ref if sep else item
    return out


def run(
    base_ref: str | None,
    adapters: dict[str, str],
    host: str,
    port: int,
    api_key: str | None = None,
    max_tokens: int = 512,
    max_prompt_tokens: int = 2048,
    **engine_settings,
) -> None:
    """Serve until interrupted. Without a key (argument or FORGETLESS_API_KEY) only on loopback.
    engine_settings: max_batch, max_queue, request_timeout, adapter_root, max_adapters (see Engine)."""

    key = api_key or os.environ.get("FORGETLESS_API_KEY")
    if not key and host not in LOOPBACK:
        raise UserError(f"host {host} exposes the server beyond this machine: set --api-key or FORGETLESS_API_KEY")
    engine = Engine(base_ref, adapters, max_tokens, max_prompt_tokens, **engine_settings)
    print(f"[forgetless] serving {', '.join(engine.names)} on http://{host}:{port}/v1", flush=True)
    # uvicorn handles SIGTERM/SIGINT: it stops accepting, waits for the requests in flight, then
    # runs the lifespan's shutdown (which stops the batcher).
    uvicorn.run(create_app(engine, key), host=host, port=port, log_level="warning")
